"""jscorch: sparse machine learning in JAX.

Sparse arrays in any TACO-style format, carried through ``jit``, ``vmap`` and
``grad``; see ``README.md`` and ``docs/``.
"""
from jscorch.array import SparseArray as SparseArray
from jscorch.array import is_sparse as is_sparse
from jscorch.autodiff import grad as grad
from jscorch.autodiff import value_and_grad as value_and_grad
from jscorch.config import config as config
from jscorch.construct import eye as eye
from jscorch.construct import from_coo as from_coo
from jscorch.construct import from_dense as from_dense
from jscorch.construct import random as random
from jscorch.interop import from_bcoo as from_bcoo
from jscorch.interop import from_scipy as from_scipy
from jscorch.primitives._errors import CapacityRequiredError as CapacityRequiredError
from jscorch.primitives._errors import SparseCapacityError as SparseCapacityError
from jscorch.primitives._errors import SparseEfficiencyWarning as SparseEfficiencyWarning
from jscorch.primitives._errors import SparseFormatError as SparseFormatError
from jscorch.primitives.formats import COO as COO
from jscorch.primitives.formats import CSC as CSC
from jscorch.primitives.formats import CSF as CSF
from jscorch.primitives.formats import CSR as CSR
from jscorch.primitives.formats import DCSR as DCSR
from jscorch.primitives.formats import FORMAT_NAMES as FORMAT_NAMES
from jscorch.primitives.formats import Format as Format
from jscorch.primitives.formats import Level as Level
from jscorch.primitives.formats import compressed as compressed
from jscorch.primitives.formats import dense as dense
from jscorch.primitives.formats import singleton as singleton

__version__ = "0.1.0"

__all__ = [
    "COO", "CSC", "CSF", "CSR", "CapacityRequiredError", "DCSR", "FORMAT_NAMES", "Format",
    "Level", "SparseArray", "SparseCapacityError", "SparseEfficiencyWarning", "SparseFormatError",
    "compressed",
    "config", "dense", "eye", "from_bcoo", "from_coo", "from_dense", "from_scipy", "grad",
    "is_sparse", "random", "singleton", "value_and_grad",
]
from jscorch.einsum import einsum as einsum  # noqa: E402
__all__.append("einsum")
from jscorch.ops import unary as _ops_unary  # noqa: E402
from jscorch.ops.elementwise import add as add  # noqa: E402
from jscorch.ops.shape import broadcast_to as broadcast_to  # noqa: E402
from jscorch.ops.shape import concatenate as concatenate  # noqa: E402
from jscorch.ops.shape import expand_dims as expand_dims  # noqa: E402
from jscorch.ops.shape import reshape as reshape  # noqa: E402
from jscorch.ops.shape import squeeze as squeeze  # noqa: E402
from jscorch.ops.shape import stack as stack  # noqa: E402
from jscorch.ops.products import divide as divide  # noqa: E402
from jscorch.ops.products import dot as dot  # noqa: E402
from jscorch.ops.products import matmul as matmul  # noqa: E402
from jscorch.ops.elementwise import maximum as maximum  # noqa: E402
from jscorch.ops.elementwise import minimum as minimum  # noqa: E402
from jscorch.ops.products import multiply as multiply  # noqa: E402
from jscorch.ops.elementwise import power as power  # noqa: E402
from jscorch.ops.elementwise import subtract as subtract  # noqa: E402
from jscorch.ops.reduce import sum as sum  # noqa: E402
from jscorch.ops.shape import transpose as transpose  # noqa: E402
from jscorch.ops.softmax import softmax as softmax  # noqa: E402
from jscorch.ops.unary import ZERO_PRESERVING as ZERO_PRESERVING  # noqa: E402

# The zero-preserving elementwise functions (js.sin, js.abs, js.relu, ...), one per entry
# of ZERO_PRESERVING.
globals().update({_name: getattr(_ops_unary, _name) for _name in _ops_unary.ZERO_PRESERVING})
__all__ += ["ZERO_PRESERVING", "add", "broadcast_to", "concatenate", "divide", "dot",
            "expand_dims", "matmul", "maximum", "minimum", "multiply", "power", "reshape",
            "softmax", "squeeze", "stack",
            "subtract", "sum", "transpose", *_ops_unary.ZERO_PRESERVING]
from jscorch.ops.coalesce import eliminate_zeros as eliminate_zeros  # noqa: E402
from jscorch.ops.coalesce import sort_indices as sort_indices  # noqa: E402
from jscorch.ops.coalesce import sum_duplicates as sum_duplicates  # noqa: E402
from jscorch.ops.reduce import count_nonzero as count_nonzero  # noqa: E402
from jscorch.ops.reduce import max as max  # noqa: E402
from jscorch.ops.reduce import mean as mean  # noqa: E402
from jscorch.ops.reduce import min as min  # noqa: E402
from jscorch.ops.reduce import segment_max as segment_max  # noqa: E402
from jscorch.ops.reduce import segment_min as segment_min  # noqa: E402
from jscorch.ops.triangular import diag as diag  # noqa: E402
from jscorch.ops.triangular import diagonal as diagonal  # noqa: E402
from jscorch.ops.triangular import tril as tril  # noqa: E402
from jscorch.ops.triangular import triu as triu  # noqa: E402

__all__ += ["count_nonzero", "diag", "diagonal", "eliminate_zeros", "max", "mean", "min",
            "segment_max", "segment_min", "sort_indices", "sum_duplicates", "tril", "triu"]
from jscorch import distributed as distributed  # noqa: E402
from jscorch import graph as graph  # noqa: E402
from jscorch.primitives._errors import SparsifyError as SparsifyError  # noqa: E402
from jscorch.sparsify import sparsify as sparsify  # noqa: E402

__all__ += ["SparsifyError", "distributed", "graph", "sparsify"]
from jscorch.ops.dropout import dropout as dropout  # noqa: E402

__all__ += ["dropout"]
from jscorch.ops.layout import todense as todense  # noqa: E402
from jscorch.ops.layout import update_layout as update_layout  # noqa: E402

__all__ += ["todense", "update_layout"]


def __getattr__(name: str):
  """``js.nn`` (the Flax NNX layers) imports on first use, so ``import jscorch`` stays light."""
  if name == "nn":
    import importlib   # noqa: PLC0415
    return importlib.import_module("jscorch.nn")
  raise AttributeError(f"module 'jscorch' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | {"nn"})


__all__ += ["nn"]
