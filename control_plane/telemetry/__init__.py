"""Telemetry on the control plane: ingest of device reports, hourly aggregation per
release x cohort x device class, estimates that account for the devices' privacy noise,
and the rollout gates on p95 latency and error rate."""
