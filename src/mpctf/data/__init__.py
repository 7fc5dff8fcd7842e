"""Data: sources, splits across parties, per-round chunking, and task formats."""
