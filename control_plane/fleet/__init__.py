"""Devices: enrollment with one-time tokens, and what the fleet looks like."""
