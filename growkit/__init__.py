"""growkit: grow a small pretrained transformer into a larger one.

    import growkit
    big = growkit.grow(small, {"hidden_size": 256, "num_hidden_layers": 8}, method="exact")
"""
from .core.errors import GrowError

__version__ = "0.1.0"
__all__ = ["GrowError", "grow", "methods"]


def __getattr__(name: str):
    """``grow`` and ``methods`` load torch on first use, so ``python -m growkit --help`` does not wait for it."""
    if name in ("grow", "methods"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'growkit' has no attribute {name!r}")
