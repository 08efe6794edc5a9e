"""Evaluations as code: small redistributable data sets with runners and recorded baselines."""
