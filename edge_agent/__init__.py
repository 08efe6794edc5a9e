"""Outpost edge agent."""
