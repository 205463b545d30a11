"""Metrics per task kind (metrics.py) and face verification on pairs (verification.py)."""
