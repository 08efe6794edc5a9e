"""Outpost control plane."""
