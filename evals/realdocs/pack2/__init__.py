"""The second real-document pack: held-out only (no tuning split; nobody tunes on it)."""
