"""Releases: a named, versioned set of artifacts plus config, published as one unit."""
