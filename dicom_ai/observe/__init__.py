"""Observing the running node: Prometheus metrics (`metrics`, `collector`) and health checks (`health`)."""
