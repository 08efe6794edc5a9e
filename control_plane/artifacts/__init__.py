"""Artifacts: uploaded, type-checked, hashed and stored content-addressed."""
