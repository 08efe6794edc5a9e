"""The control plane seen from outside: Prometheus metrics (``/metrics``)."""

from control_plane.observability.metrics import METRICS_PATH, install_metrics

__all__ = ["METRICS_PATH", "install_metrics"]
