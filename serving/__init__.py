"""Serving: the live customer view (features joined with the current model outputs)."""
