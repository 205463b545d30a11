"""Inference: exported model folders, the Predictor, zero-shot compounds and the predict/export CLI."""
