"""The SparseArray methods that the ops layer implements, attached to the class at import.

:mod:`jscorch.array` defines the pytree, its metadata and its array conventions, and
imports only :mod:`jscorch.primitives`; the ops modules import it. The operators
(``@ * / + - **``, ``abs``), reductions (``sum``, ``max``, ...), shape, format and
coalescing methods call the ops modules, so they are set on :class:`SparseArray` here,
once, when ``jscorch`` is imported (as JAX attaches the ``jax.Array`` methods in
``_set_array_base_attributes``). Each method is the function of the same name in
``jscorch`` applied to ``self``; see there for the rules.

Example:
  >>> import jax.numpy as jnp, jscorch as js
  >>> A = js.from_dense(jnp.array([[1., 0.], [3., 2.]]))
  >>> (A @ jnp.ones(2)).tolist(), A.max(axis=0).tolist(), (2 * A).data.tolist()
  ([1.0, 5.0], [3.0, 2.0], [2.0, 6.0, 4.0])
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax

from jscorch import _transpose, interop
from jscorch.array import SparseArray, operand_or_raise
from jscorch.ops import (
  coalesce,
  elementwise,
  index,
  layout,
  products,
  reduce,
  shape,
  triangular,
  unary,
)
from jscorch.primitives.formats import FormatLike


# -- operators ------------------------------------------------------------------------------
def _binary(name: str, op: Callable, *, swap: bool) -> Callable:
  """``A <op> x`` (or ``x <op> A`` when ``swap``); ``NotImplemented`` for an unknown ``x``."""

  def method(self, other):
    if not operand_or_raise(other):
      return NotImplemented
    return op(other, self) if swap else op(self, other)

  args = "other, self" if swap else "self, other"
  method.__doc__ = f"``jscorch.{name}({args})``; ``NotImplemented`` for an unknown operand."
  return method


_OPERATORS = {"matmul": products.matmul, "mul": products.multiply, "truediv": products.divide,
              "add": elementwise.add, "sub": elementwise.subtract, "pow": elementwise.power}


def _abs(self) -> SparseArray:
  """``abs(A)``: :func:`jscorch.abs` (duplicates summed first: ``abs`` is not linear)."""
  return unary.abs(self)


# -- reductions -------------------------------------------------------------------------------
def _sum(self, axis: int | Sequence[int] | None = None, dtype=None,
         keepdims: bool = False) -> jax.Array:
  """Sum over ``axis`` (all by default): a dense array (see :func:`jscorch.sum`).

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> js.from_dense(jnp.array([[1., 0.], [3., 2.]])).sum(axis=1)
    Array([1., 5.], dtype=float32)
  """
  return reduce.sum(self, axis=axis, dtype=dtype, keepdims=keepdims)


def _max(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> jax.Array:
  """Maximum over ``axis`` counting implicit zeros: a dense array (see :func:`jscorch.max`)."""
  return reduce.max(self, axis=axis, keepdims=keepdims)


def _min(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> jax.Array:
  """Minimum over ``axis`` counting implicit zeros: a dense array (see :func:`jscorch.min`)."""
  return reduce.min(self, axis=axis, keepdims=keepdims)


def _mean(self, axis: int | Sequence[int] | None = None, dtype=None,
          keepdims: bool = False) -> jax.Array:
  """Mean over ``axis`` (implicit zeros included): a dense array (see :func:`jscorch.mean`)."""
  return reduce.mean(self, axis=axis, dtype=dtype, keepdims=keepdims)


def _diagonal(self, offset: int = 0, axis1: int = 0, axis2: int = 1) -> jax.Array:
  """The diagonal as a dense array, as ``numpy.diagonal`` (see :func:`jscorch.diagonal`)."""
  return triangular.diagonal(self, offset=offset, axis1=axis1, axis2=axis2)


# -- coalescing -------------------------------------------------------------------------------
def _sum_duplicates(self, nse: int | None = None) -> SparseArray:
  """Every coordinate stored once, sorted (see :func:`jscorch.sum_duplicates`)."""
  return coalesce.sum_duplicates(self, nse=nse)


def _sort_indices(self) -> SparseArray:
  """Entries in lexicographic storage order, duplicates kept (see :func:`jscorch.sort_indices`)."""
  return coalesce.sort_indices(self)


def _eliminate_zeros(self, nse: int | None = None) -> SparseArray:
  """Explicitly stored zeros become padding (see :func:`jscorch.eliminate_zeros`)."""
  return coalesce.eliminate_zeros(self, nse=nse)


# -- formats and conversions ------------------------------------------------------------------
def _asformat(self, format: FormatLike, *, nse: int | None = None) -> SparseArray:
  """The same tensor stored in another format (see :func:`jscorch.ops.layout.asformat`).

  Args:
    format: the target format or its name; dense levels below its last sparse
      level store rows of dense vectors (``nse`` then counts rows).
    nse: the target capacity (static); default: this array's ``nse`` when the
      batch / sparse / block split is unchanged.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> js.from_dense(jnp.eye(3), format="csr").asformat("csc").format
    Format(dense, compressed, mode_ordering=(1, 0))
  """
  return layout.asformat(self, format, nse=nse)


def _update_layout(self, n_batch: int | None = None, n_dense: int | None = None, *,
                   format: FormatLike | None = None, nse: int | None = None,
                   on_inefficient: str | None = "warn") -> SparseArray:
  """The same tensor with other batch / block dim counts (see :func:`jscorch.update_layout`).

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> js.from_dense(jnp.eye(2), format="coo").update_layout(n_batch=1).format
    Format(compressed, n_batch=1)
  """
  return layout.update_layout(self, n_batch, n_dense, format=format, nse=nse,
                              on_inefficient=on_inefficient)


def _to_scipy(self):
  """A ``scipy.sparse`` array (csr/csc/coo by format; others as coo). 2-D, unbatched."""
  return interop.to_scipy(self)


def _to_bcoo(self):
  """A ``jax.experimental.sparse.BCOO`` with the same batch/block dims and padding."""
  return interop.to_bcoo(self)


# -- shape ------------------------------------------------------------------------------------
def _transpose_method(self, axes: Sequence[int] | None = None) -> SparseArray:
  """Permutes dimensions; free (a mode-ordering change) within each dimension group.

  Args:
    axes: a permutation of ``range(ndim)`` (default: reversed). Batch dims must
      stay among batch dims and block dims among block dims.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[0., 2.], [3., 0.]]), format="csr")
    >>> A.T.format == js.CSC, bool((A.T.todense() == A.todense().T).all())
    (True, True)
  """
  return _transpose.transpose(self, axes)


def _reshape(self, *new_shape, format: FormatLike | None = None) -> SparseArray:
  """The same entries in another shape, row-major (see :func:`jscorch.reshape`).

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> js.from_dense(jnp.eye(2), format="csr").reshape(-1).todense()
    Array([1., 0., 0., 1.], dtype=float32)
  """
  return shape.reshape(self, new_shape[0] if len(new_shape) == 1 else new_shape, format=format)


def _getitem(self, key):
  """``A[key]``, numpy's rules: ints, slices, ``None``, ``...``, integer arrays and boolean
  masks; dense when every sparse dim is indexed by points (see :mod:`jscorch.ops.index`)."""
  return index.getitem(self, key)


def _expand_dims(self, axis: int | Sequence[int]) -> SparseArray:
  """Unit dims inserted at ``axis`` (see :func:`jscorch.expand_dims`)."""
  return shape.expand_dims(self, axis)


def _squeeze(self, axis: int | Sequence[int] | None = None):
  """Unit dims ``axis`` removed (see :func:`jscorch.squeeze`)."""
  return shape.squeeze(self, axis)


def _set_sparse_array_attributes(cls: type) -> None:
  """Sets the ops-layer methods on ``cls`` (named as the class's own methods)."""
  methods = {"__abs__": _abs, "sum": _sum, "max": _max, "min": _min, "mean": _mean,
             "diagonal": _diagonal, "sum_duplicates": _sum_duplicates,
             "sort_indices": _sort_indices, "eliminate_zeros": _eliminate_zeros,
             "asformat": _asformat, "update_layout": _update_layout, "to_scipy": _to_scipy,
             "to_bcoo": _to_bcoo, "transpose": _transpose_method, "reshape": _reshape,
             "__getitem__": _getitem, "expand_dims": _expand_dims, "squeeze": _squeeze}
  for name, op in _OPERATORS.items():
    methods[f"__{name}__"] = _binary(op.__name__, op, swap=False)
    methods[f"__r{name}__"] = _binary(op.__name__, op, swap=True)
  for name, method in methods.items():
    method.__name__ = name
    method.__qualname__ = f"{cls.__name__}.{name}"
    method.__module__ = cls.__module__
    setattr(cls, name, method)


_set_sparse_array_attributes(SparseArray)
