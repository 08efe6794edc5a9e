"""The HTTP API: operator, device and repository routes over the domain packages."""
