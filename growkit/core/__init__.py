"""Lowest layer: the canonical weight view, sizes and user-facing errors."""
