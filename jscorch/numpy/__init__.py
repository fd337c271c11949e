"""``jscorch.numpy``: a drop-in for ``jax.numpy`` that accepts SparseArrays where it matters.

``import jscorch.numpy as jnp`` gives every name of ``jax.numpy``. These accept
SparseArrays (and are the ``jax.numpy`` functions on dense inputs):

* products and sums: ``einsum``, ``matmul``, ``dot``, ``multiply``, ``divide`` /
  ``true_divide``, ``add``, ``subtract``, ``maximum``, ``minimum``, ``power``,
  ``sum``, ``transpose`` (see :mod:`jscorch.ops.products`, :mod:`jscorch.ops.elementwise`);
* shapes: ``reshape``, ``expand_dims``, ``squeeze``, ``broadcast_to``, ``stack``,
  ``concatenate`` (:mod:`jscorch.ops.shape`);
* reductions and triangles: ``max``, ``min``, ``mean``, ``count_nonzero``
  (:mod:`jscorch.ops.reduce`), ``tril``, ``triu``, ``diagonal``, ``diag``
  (:mod:`jscorch.ops.triangular`);
* the zero-preserving elementwise functions (``abs``, ``sin``, ``tanh``, ``sqrt``,
  ``negative``, ... — the ``jax.numpy`` entries of ``jscorch.ZERO_PRESERVING``),
  which map the stored values.

Every other function refuses a SparseArray argument with a TypeError that names
it and says to call ``A.todense()`` first (``exp``, ``cos``, ... are not
zero-preserving, so their result would be dense). Non-function attributes
(dtypes, constants, ``linalg``, ...) are those of ``jax.numpy``.

Example:
  >>> import jax.numpy as jnp, jscorch as js, jscorch.numpy as jsnp
  >>> A = js.from_dense(jnp.array([[1., 0.], [0., -2.]]))
  >>> jsnp.abs(A).data, jsnp.sum(A, axis=0), jsnp.float32 is jnp.float32
  (Array([1., 2.], dtype=float32), Array([ 1., -2.], dtype=float32), True)
  >>> jsnp.exp(A)  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  TypeError: jscorch.numpy.exp: exp is not zero-preserving ...
"""
import jax.numpy as _jax_numpy

from jscorch.numpy import _wrap
from jscorch.numpy._wrap import einsum as einsum
from jscorch.ops import unary as _ops_unary
from jscorch.ops.elementwise import add as add
from jscorch.ops.elementwise import maximum as maximum
from jscorch.ops.elementwise import minimum as minimum
from jscorch.ops.elementwise import power as power
from jscorch.ops.elementwise import subtract as subtract
from jscorch.ops.products import divide as divide
from jscorch.ops.products import dot as dot
from jscorch.ops.products import matmul as matmul
from jscorch.ops.products import multiply as multiply
from jscorch.ops.reduce import count_nonzero as count_nonzero
from jscorch.ops.reduce import max as max  # noqa: A004
from jscorch.ops.reduce import mean as mean
from jscorch.ops.reduce import min as min  # noqa: A004
from jscorch.ops.reduce import sum as sum  # noqa: A004
from jscorch.ops.shape import broadcast_to as broadcast_to
from jscorch.ops.shape import concatenate as concatenate
from jscorch.ops.shape import expand_dims as expand_dims
from jscorch.ops.shape import reshape as reshape
from jscorch.ops.shape import squeeze as squeeze
from jscorch.ops.shape import stack as stack
from jscorch.ops.shape import transpose as transpose
from jscorch.ops.triangular import diag as diag
from jscorch.ops.triangular import diagonal as diagonal
from jscorch.ops.triangular import tril as tril
from jscorch.ops.triangular import triu as triu

true_divide = divide
pow = power  # noqa: A001

_UNARY = {name: getattr(_ops_unary, name) for name, entry in _ops_unary.ZERO_PRESERVING.items()
          if entry.reference.startswith("jnp.")}
globals().update(_UNARY)

# Own functions carry the attributes of their jax.numpy namesakes (jnp.add.at, .reduce, ...).
for _name in ("add", "subtract", "multiply", "negative"):
  globals()[_name] = _wrap.SparseAware(_name, globals()[_name], getattr(_jax_numpy, _name))
del _name

_OWN = ["add", "concatenate", "divide", "dot", "einsum", "matmul", "multiply", "pow", "power",
        "subtract", "sum", "transpose", "true_divide", "count_nonzero", "diag", "diagonal",
        "max", "maximum", "mean", "min", "minimum", "tril", "triu", "broadcast_to", "expand_dims",
        "reshape", "squeeze", "stack", *_UNARY]

__all__ = sorted(set(_OWN) | set(_wrap.public_names()))


def __getattr__(name: str):
  obj = getattr(_jax_numpy, name)       # raises jax.numpy's own AttributeError
  obj = _wrap.wrap(name, obj)
  globals()[name] = obj                 # later look-ups skip __getattr__
  return obj


def __dir__():
  return sorted(set(globals()) | set(__all__))
