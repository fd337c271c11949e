"""jscorch: sparse machine learning in JAX.

Sparse arrays in any TACO-style format, carried through ``jit``, ``vmap`` and
``grad``; see ``README.md`` and ``docs/``. The zero-preserving elementwise functions
(``js.sin``, ``js.abs``, ``js.relu``, ...) are the entries of ``js.ZERO_PRESERVING``;
``js.nn`` (the Flax NNX layers) imports on first use.
"""
from jscorch import (
  _methods,  # noqa: F401 (attaches the ops-layer SparseArray methods)
  distributed,
  graph,
)
from jscorch.array import SparseArray, is_sparse
from jscorch.autodiff import grad, value_and_grad
from jscorch.config import config, enable_compilation_cache
from jscorch.construct import eye, from_coo, from_dense, random
from jscorch.einsum import einsum
from jscorch.host_memory import release_host_memory, retain_host_memory
from jscorch.interop import from_bcoo, from_scipy
from jscorch.ops.coalesce import eliminate_zeros, sort_indices, sum_duplicates
from jscorch.ops.dropout import dropout
from jscorch.ops.elementwise import add, maximum, minimum, power, subtract
from jscorch.ops.layout import todense, update_layout
from jscorch.ops.products import divide, dot, matmul, multiply
from jscorch.ops.reduce import count_nonzero, max, mean, min, segment_max, segment_min, sum
from jscorch.ops.shape import (
  broadcast_to,
  concatenate,
  expand_dims,
  reshape,
  squeeze,
  stack,
  transpose,
)
from jscorch.ops.softmax import softmax
from jscorch.ops.triangular import diag, diagonal, tril, triu
from jscorch.ops.unary import (
  ZERO_PRESERVING,
  abs,
  absolute,
  arcsin,
  arcsinh,
  arctan,
  arctanh,
  asin,
  asinh,
  atan,
  atanh,
  cbrt,
  ceil,
  celu,
  conj,
  conjugate,
  deg2rad,
  degrees,
  elu,
  expm1,
  floor,
  gelu,
  hard_tanh,
  imag,
  leaky_relu,
  log1p,
  negative,
  positive,
  rad2deg,
  radians,
  real,
  relu,
  relu6,
  rint,
  round,
  selu,
  sign,
  silu,
  sin,
  sinh,
  soft_sign,
  sqrt,
  square,
  tan,
  tanh,
  trunc,
)
from jscorch.primitives._errors import (
  CapacityRequiredError,
  SparseCapacityError,
  SparseEfficiencyWarning,
  SparseFormatError,
  SparsifyError,
)
from jscorch.primitives.formats import (
  BSR,
  COO,
  CSC,
  CSF,
  CSR,
  DCSR,
  FORMAT_NAMES,
  Format,
  Level,
  blocked,
  compressed,
  dense,
  singleton,
)
from jscorch.sparsify import sparsify

__version__ = "0.1.0"

__all__ = [
    "BSR", "COO", "CSC", "CSF", "CSR", "CapacityRequiredError", "DCSR", "FORMAT_NAMES", "Format",
    "Level", "SparseArray", "SparseCapacityError", "SparseEfficiencyWarning",
    "SparseFormatError", "SparsifyError", "ZERO_PRESERVING", "abs", "absolute", "add", "arcsin",
    "arcsinh", "arctan", "arctanh", "asin", "asinh", "atan", "atanh", "blocked", "broadcast_to",
    "cbrt",
    "ceil", "celu", "compressed", "concatenate", "config", "conj", "conjugate", "count_nonzero",
    "deg2rad", "degrees", "dense", "diag", "diagonal", "distributed", "divide", "dot",
    "dropout", "einsum", "eliminate_zeros", "elu", "enable_compilation_cache", "expand_dims",
    "expm1", "eye", "floor",
    "from_bcoo", "from_coo", "from_dense", "from_scipy", "gelu", "grad", "graph", "hard_tanh",
    "imag", "is_sparse", "leaky_relu", "log1p", "matmul", "max", "maximum", "mean", "min",
    "minimum", "multiply", "negative", "nn", "positive", "power", "rad2deg", "radians",
    "random", "real", "release_host_memory", "relu", "relu6", "reshape",
    "retain_host_memory", "rint", "round", "segment_max", "segment_min",
    "selu", "sign", "silu", "sin", "singleton", "sinh", "soft_sign", "softmax", "sort_indices",
    "sparsify", "sqrt", "square", "squeeze", "stack", "subtract", "sum", "sum_duplicates",
    "tan", "tanh", "todense", "transpose", "tril", "triu", "trunc", "update_layout",
    "value_and_grad"
]


def __getattr__(name: str):
  """``js.nn`` (the Flax NNX layers) imports on first use, so ``import jscorch`` stays light."""
  if name == "nn":
    import importlib  # noqa: PLC0415
    return importlib.import_module("jscorch.nn")
  raise AttributeError(f"module 'jscorch' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | {"nn"})
