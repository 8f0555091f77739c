"""softrank: fast differentiable sorting and ranking (Blondel et al., ICML 2020).

``soft_rank``, ``soft_sort``, ``soft_topk``, ``soft_quantile`` and ``project_permutahedron`` accept torch tensors (CPU/CUDA, autograd), NumPy arrays, CuPy
arrays and array_likes. Importing softrank imports neither torch nor CuPy.
"""
try:
    from . import _cpu  # noqa: F401  (the compiled solver)
except ImportError as error:  # a source folder without its build, e.g. after `pip install .`
    raise ImportError(
        f"softrank's compiled extension softrank._cpu is missing in {__path__[0]}: this is the "
        "source folder, not the installed package. Run Python outside the source checkout, or "
        "build it in place with `pip install -e .` (or `python setup.py build_ext --inplace`)."
    ) from error
from typing import TYPE_CHECKING

from ._api import (project_permutahedron, soft_quantile, soft_quantile_vjp, soft_rank,
                   soft_rank_vjp, soft_sort, soft_sort_vjp, soft_topk, soft_topk_vjp)
from ._version import __version__

if TYPE_CHECKING:  # type checkers see the lazy exports below; at run time they stay lazy
    from ._spearman import pearsonr, spearmanr
    from ._spearman_torch import SpearmanLoss

__all__ = [
    "soft_rank",
    "soft_sort",
    "soft_rank_vjp",
    "soft_sort_vjp",
    "soft_topk",
    "soft_topk_vjp",
    "soft_quantile",
    "soft_quantile_vjp",
    "project_permutahedron",
    "spearmanr",
    "pearsonr",
    "SpearmanLoss",
    "__version__",
]

# Exported lazily: their modules are imported on first use (SpearmanLoss needs torch).
_LAZY = {"spearmanr": "_spearman", "pearsonr": "_spearman", "SpearmanLoss": "_spearman_torch"}


if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt name is an error there

    def __getattr__(name):
        if name in _LAZY:
            import importlib

            module = importlib.import_module(f".{_LAZY[name]}", __name__)
            return getattr(module, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
