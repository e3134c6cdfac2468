"""Maintenance scripts run with `python -m uvit.tools.<name>` (not imported by the pipeline)."""
