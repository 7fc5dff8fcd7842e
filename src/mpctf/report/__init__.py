"""Metrics store, progress display and the run report."""
