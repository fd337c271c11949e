"""``SparseArray``: level buffers (pytree leaves) plus a static format and shape.

The leaves are ``data`` and the index buffers of every level (``pos`` and ``crd`` of
compressed levels, ``crd`` of singleton levels, in level order). The static aux
data is the format *without* its batch dimensions and the shape *after* them: the
batch shape is read from the buffers, so a SparseArray unflattened inside
``jax.vmap`` (where the buffers lost a leading axis) is consistent by construction.

Example:
  >>> import jax.numpy as jnp, jscorch as js
  >>> A = js.from_dense(jnp.array([[0., 2.], [3., 0.]]), format="csr")
  >>> A
  SparseArray(float32[2, 2], format=CSR, nse=2)
  >>> A.pos(1), A.crd(1)
  (Array([0, 1, 2], dtype=int32), Array([1, 0], dtype=int32))
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jscorch.primitives import checks, convert
from jscorch.primitives._errors import SparseFormatError
from jscorch.primitives.formats import Format, FormatLike, resolve_format
from jscorch.primitives.layout import Layout


# Compiled once per layout: eager calls would otherwise dispatch (and compile) op by op.
_todense = jax.jit(convert.todense, static_argnums=0)
_count_entries = jax.jit(convert.count_entries, static_argnums=0)


@jax.tree_util.register_pytree_node_class
class SparseArray:
  """A sparse array in any :class:`Format` (see the module docstring).

  Build one with :func:`jscorch.from_dense`, :func:`jscorch.from_coo`,
  :func:`jscorch.from_scipy`, :func:`jscorch.random` or, from raw level buffers,
  :meth:`SparseArray.from_buffers`.
  """
  __slots__ = ("data", "indices", "_format", "_shape")
  __array_priority__ = 100   # numpy defers binary operators to us

  # -- construction --------------------------------------------------------------------
  @classmethod
  def _make(cls, data, indices, fmt: Format, shape) -> SparseArray:
    """Wraps buffers without checks; ``fmt``/``shape`` may include batch dims."""
    self = object.__new__(cls)
    self.data = data
    self.indices = tuple(indices)
    self._format = fmt.replace(n_batch=0)
    self._shape = tuple(shape)[fmt.n_batch:]
    return self

  @classmethod
  def from_buffers(cls, data, indices: Sequence, *, shape: Sequence[int],
                   format: FormatLike, check: bool = True) -> SparseArray:
    """Wraps level buffers after validating them.

    Args:
      data: `[*batch, nse, *block]` values.
      indices: the index buffers in level order (``pos``, ``crd`` per compressed
        level; ``crd`` per singleton level).
      shape: the full shape ``(*batch, *sparse, *block)``.
      format: a :class:`Format` (with ``n_batch``/``n_dense``) or a name.
      check: validate coordinates, order and uniqueness when the buffers are
        concrete (shapes and dtypes are always checked).

    Raises:
      SparseFormatError: wrong buffer count or shapes, bad coordinates.
      TypeError: non-integer index buffers.

    Example:
      >>> import jax.numpy as jnp, jscorch as js
      >>> A = js.SparseArray.from_buffers(jnp.array([1., 2.]),
      ...     [jnp.array([0, 1, 2]), jnp.array([1, 0])], shape=(2, 2), format="csr")
      >>> A.todense()
      Array([[0., 1.],
             [2., 0.]], dtype=float32)
    """
    func = "SparseArray.from_buffers"
    shape = tuple(int(s) for s in shape)
    data = jnp.asarray(data)
    fmt = resolve_format(format, len(shape), func=func)
    nse = data.shape[fmt.n_batch] if data.ndim > fmt.n_batch else -1
    lay = Layout.make(fmt, shape, nse, func)
    indices = tuple(jnp.asarray(i) for i in indices)
    lay.check_buffers(data, indices, func)
    indices = tuple(i.astype(lay.index_dtype) for i in indices)
    if check and checks.is_concrete(*indices):
      checks.check_indices(lay, indices, func)
    return cls._make(data, indices, fmt, shape)

  # -- pytree ----------------------------------------------------------------------------
  def tree_flatten(self):
    return (self.data, *self.indices), (self._format, self._shape)

  @classmethod
  def tree_unflatten(cls, aux, children):
    self = object.__new__(cls)
    self.data = children[0]
    self.indices = tuple(children[1:])
    self._format, self._shape = aux
    return self

  # -- static metadata -----------------------------------------------------------------
  @property
  def n_batch(self) -> int:
    return self.data.ndim - 1 - self._format.n_dense

  @property
  def n_dense(self) -> int:
    return self._format.n_dense

  @property
  def n_sparse(self) -> int:
    return self._format.n_sparse

  @property
  def format(self) -> Format:
    return self._format.replace(n_batch=self.n_batch)

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.data.shape[:self.n_batch]) + self._shape

  @property
  def nse(self) -> int:
    """Capacity: number of stored entries per batch element (padding included)."""
    return self.data.shape[self.n_batch]

  @property
  def layout(self) -> Layout:
    return Layout(self.format, self.shape, self.nse)

  @property
  def dtype(self):
    return self.data.dtype

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def index_dtype(self):
    return self.layout.index_dtype

  @property
  def nnz(self):
    """Number of entries in use (without padding), per batch element."""
    return _count_entries(self.layout, self.indices)

  def pos(self, level: int) -> jax.Array:
    """The ``pos`` buffer of a compressed level."""
    return self._buffer(level, "pos")

  def crd(self, level: int) -> jax.Array:
    """The ``crd`` buffer of a compressed or singleton level."""
    return self._buffer(level, "crd")

  def _buffer(self, level, role):
    for (k, r, _), buf in zip(self.layout.index_shapes, self.indices):
      if (k, r) == (level, role):
        return buf
    raise SparseFormatError(
        f"SparseArray.{role}: level {level} of format {self.format!r} has no {role} buffer.")

  def __repr__(self):
    name = self._format.name
    fmt = name.upper() if name else repr(self._format)
    extra = "".join(f", {k}={v}" for k, v in (("n_batch", self.n_batch),
                                               ("n_dense", self.n_dense)) if v)
    dims = ", ".join(map(str, self.shape))
    return f"SparseArray({jnp.dtype(self.dtype).name}[{dims}], format={fmt}, nse={self.nse}{extra})"

  # -- conversions -------------------------------------------------------------------------
  def with_data(self, data) -> SparseArray:
    """The same pattern with new values (``data`` shaped like ``self.data``)."""
    return SparseArray._make(data, self.indices, self.format, self.shape)

  def todense(self) -> jax.Array:
    """The dense array; duplicates are summed, padding ignored.

    Example:
      >>> import jax.numpy as jnp, jscorch as js
      >>> js.from_dense(jnp.eye(2), format="coo").todense()
      Array([[1., 0.],
             [0., 1.]], dtype=float32)
    """
    return _todense(self.layout, self.data, self.indices)

  def asformat(self, format: FormatLike, *, nse: int | None = None) -> SparseArray:
    """The same tensor stored in another format (batch and block dims kept).

    Args:
      format: the target format or its name.
      nse: the target capacity (static); default: this array's ``nse``.

    Example:
      >>> import jax.numpy as jnp, jscorch as js
      >>> js.from_dense(jnp.eye(3), format="csr").asformat("csc").format
      Format(dense, compressed, mode_ordering=(1, 0))
    """
    from jscorch import _static
    func = "SparseArray.asformat"
    fmt = resolve_format(format, self.ndim, n_batch=self.n_batch, n_dense=self.n_dense,
                         func=func)
    nse = self.nse if nse is None else _static.static_int(nse, "nse", func)
    if all(l.kind == "dense" for l in fmt.levels):
      nse = math.prod(Layout(fmt, self.shape, 0).level_sizes)
    dst = Layout.make(fmt, self.shape, nse, func)
    if dst == self.layout:
      return self
    data, indices = convert.convert(self.layout, dst, self.data, self.indices, func=func)
    return SparseArray._make(data, indices, fmt, self.shape)

  def astype(self, dtype) -> SparseArray:
    """The same pattern with values cast to ``dtype``."""
    return self.with_data(self.data.astype(dtype))

  def to_scipy(self):
    """A ``scipy.sparse`` array (csr/csc/coo by format; others as coo). 2-D, unbatched."""
    from jscorch import interop
    return interop.to_scipy(self)

  def to_bcoo(self):
    """A ``jax.experimental.sparse.BCOO`` with the same batch/block dims and padding."""
    from jscorch import interop
    return interop.to_bcoo(self)

  def transpose(self, axes: Sequence[int] | None = None) -> SparseArray:
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
    from jscorch import _transpose
    return _transpose.transpose(self, axes)

  @property
  def T(self) -> SparseArray:
    return self.transpose()

  def reshape(self, *shape, format: FormatLike | None = None) -> SparseArray:
    """The same entries in another shape, row-major (see :func:`jscorch.reshape`).

    Example:
      >>> import jax.numpy as jnp, jscorch as js
      >>> js.from_dense(jnp.eye(2), format="csr").reshape(-1).todense()
      Array([1., 0., 0., 1.], dtype=float32)
    """
    from jscorch import ops_shape   # noqa: PLC0415 (ops_shape imports this module)
    return ops_shape.reshape(self, shape[0] if len(shape) == 1 else shape, format=format)

  def __getitem__(self, key):
    """``A[key]``: ints, slices, ``None``, ``...``, one int array (see :mod:`jscorch.ops_index`)."""
    from jscorch import ops_index   # noqa: PLC0415 (ops_index imports this module)
    return ops_index.getitem(self, key)

  def expand_dims(self, axis: int | Sequence[int]) -> SparseArray:
    """Unit dims inserted at ``axis`` (see :func:`jscorch.expand_dims`)."""
    from jscorch import ops_shape   # noqa: PLC0415
    return ops_shape.expand_dims(self, axis)

  def squeeze(self, axis: int | Sequence[int] | None = None):
    """Unit dims ``axis`` removed (see :func:`jscorch.squeeze`)."""
    from jscorch import ops_shape   # noqa: PLC0415
    return ops_shape.squeeze(self, axis)

  def block_until_ready(self):
    jax.block_until_ready((self.data, self.indices))
    return self

  # -- arithmetic (jscorch.ops; see there for the rules) -----------------------------------
  def __matmul__(self, other):
    return _ops().matmul(self, other) if _ops().is_operand(other) else NotImplemented

  def __rmatmul__(self, other):
    return _ops().matmul(other, self) if _ops().is_operand(other) else NotImplemented

  def __mul__(self, other):
    return _ops().multiply(self, other) if _ops().is_operand(other) else NotImplemented

  def __rmul__(self, other):
    return _ops().multiply(other, self) if _ops().is_operand(other) else NotImplemented

  def __truediv__(self, other):
    return _ops().divide(self, other) if _ops().is_operand(other) else NotImplemented

  def __rtruediv__(self, other):
    return _ops().divide(other, self) if _ops().is_operand(other) else NotImplemented

  def __add__(self, other):
    return _ops().add(self, other) if _ops().is_operand(other) else NotImplemented

  def __radd__(self, other):
    return _ops().add(other, self) if _ops().is_operand(other) else NotImplemented

  def __sub__(self, other):
    return _ops().subtract(self, other) if _ops().is_operand(other) else NotImplemented

  def __rsub__(self, other):
    return _ops().subtract(other, self) if _ops().is_operand(other) else NotImplemented

  def __pow__(self, other):
    return _ops().power(self, other) if _ops().is_operand(other) else NotImplemented

  def __rpow__(self, other):
    return _ops().power(other, self) if _ops().is_operand(other) else NotImplemented

  def __neg__(self) -> SparseArray:
    return self.with_data(-self.data)

  def __pos__(self) -> SparseArray:
    return self

  def __abs__(self) -> SparseArray:
    from jscorch import ops_unary   # noqa: PLC0415 (duplicates summed first: abs is not linear)
    return ops_unary.abs(self)

  def sum(self, axis: int | Sequence[int] | None = None, dtype=None,
          keepdims: bool = False) -> jax.Array:
    """Sum over ``axis`` (all by default): a dense array (see :func:`jscorch.sum`).

    Example:
      >>> import jax.numpy as jnp, jscorch as js
      >>> js.from_dense(jnp.array([[1., 0.], [3., 2.]])).sum(axis=1)
      Array([1., 5.], dtype=float32)
    """
    return _ops().sum(self, axis=axis, dtype=dtype, keepdims=keepdims)

  def max(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> jax.Array:
    """Maximum over ``axis`` counting implicit zeros: a dense array (see :func:`jscorch.max`)."""
    from jscorch import ops_reduce   # noqa: PLC0415 (ops_reduce imports this module)
    return ops_reduce.max(self, axis=axis, keepdims=keepdims)

  def min(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> jax.Array:
    """Minimum over ``axis`` counting implicit zeros: a dense array (see :func:`jscorch.min`)."""
    from jscorch import ops_reduce   # noqa: PLC0415
    return ops_reduce.min(self, axis=axis, keepdims=keepdims)

  def mean(self, axis: int | Sequence[int] | None = None, dtype=None,
           keepdims: bool = False) -> jax.Array:
    """Mean over ``axis`` (implicit zeros included): a dense array (see :func:`jscorch.mean`)."""
    from jscorch import ops_reduce   # noqa: PLC0415
    return ops_reduce.mean(self, axis=axis, dtype=dtype, keepdims=keepdims)

  def diagonal(self, offset: int = 0, axis1: int = 0, axis2: int = 1) -> jax.Array:
    """The diagonal as a dense array, as ``numpy.diagonal`` (see :func:`jscorch.diagonal`)."""
    from jscorch import ops_triangular   # noqa: PLC0415
    return ops_triangular.diagonal(self, offset=offset, axis1=axis1, axis2=axis2)

  def sum_duplicates(self, nse: int | None = None) -> SparseArray:
    """Every coordinate stored once, sorted (see :func:`jscorch.sum_duplicates`)."""
    from jscorch import ops_coalesce   # noqa: PLC0415
    return ops_coalesce.sum_duplicates(self, nse=nse)

  def sort_indices(self) -> SparseArray:
    """Entries in lexicographic storage order, duplicates kept (see :func:`jscorch.sort_indices`)."""
    from jscorch import ops_coalesce   # noqa: PLC0415
    return ops_coalesce.sort_indices(self)

  def eliminate_zeros(self, nse: int | None = None) -> SparseArray:
    """Explicitly stored zeros become padding (see :func:`jscorch.eliminate_zeros`)."""
    from jscorch import ops_coalesce   # noqa: PLC0415
    return ops_coalesce.eliminate_zeros(self, nse=nse)

  def conj(self) -> SparseArray:
    """The complex conjugate of the stored values (same pattern)."""
    return self.with_data(jnp.conj(self.data))

  conjugate = conj

  @property
  def real(self) -> SparseArray:
    """The real part of the stored values (same pattern)."""
    return self.with_data(jnp.real(self.data))

  @property
  def imag(self) -> SparseArray:
    """The imaginary part of the stored values (same pattern)."""
    return self.with_data(jnp.imag(self.data))


def _ops():
  from jscorch import ops   # noqa: PLC0415 (ops imports this module)
  return ops


def is_sparse(x) -> bool:
  """True for a :class:`SparseArray`."""
  return isinstance(x, SparseArray)
