"""CUDA sources of softrank (compiled at run time by NVRTC through CuPy) and their dispatch table.

Importing this package imports neither CuPy nor anything that touches a GPU.
"""

from .tuning import get_tuning, set_tuning

__all__ = ["get_tuning", "set_tuning"]
