"""Outpost converters."""
