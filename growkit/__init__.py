"""growkit: grow a small pretrained transformer into a larger one.

    import growkit
    big = growkit.grow(small, {"hidden_size": 256, "num_hidden_layers": 8}, method="exact")
"""
from .api import grow, methods
from .core.errors import GrowError

__version__ = "0.1.0"
__all__ = ["GrowError", "grow", "methods"]
