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
import operator
import sys
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jscorch.primitives import checks, convert
from jscorch.primitives._errors import SparseEfficiencyWarning, SparseFormatError
from jscorch.primitives.formats import Format, FormatLike, resolve_format
from jscorch.primitives.layout import Layout, block_view_shape
from jscorch.primitives.transfer import to_device

# Compiled once per layout: eager calls would otherwise dispatch (and compile) op by op.
_todense = jax.jit(convert.todense, static_argnums=0)
_count_entries = jax.jit(convert.count_entries, static_argnums=0)


@jax.tree_util.register_pytree_node_class
class SparseArray:
  """A sparse array in any :class:`Format` (see the module docstring).

  Build one with :func:`jscorch.from_dense`, :func:`jscorch.from_coo`,
  :func:`jscorch.from_scipy`, :func:`jscorch.random` or, from raw level buffers,
  :meth:`SparseArray.from_buffers`.

  Array conventions: ``A != 0``, ``A > 0``, ``A == 2`` (a scalar ``s`` with ``0 op s``
  false) give a bool SparseArray with ``A``'s pattern; a comparison with a dense array
  gives a dense bool array; ``A == 0``, ``A >= 0`` and comparisons of two SparseArrays
  raise (their result is dense: compare ``A.todense()``). ``bool(A)`` works for one
  element only; ``np.asarray(A)`` is the dense numpy array; ``hash(A)`` raises, as for
  ``jax.Array``. ``jnp.*``, ``jax.nn.*`` and Flax layers refuse a SparseArray with a
  ``TypeError`` pointing to ``A.sum()``, :mod:`jscorch.numpy` and :func:`jscorch.sparsify`
  (nothing densifies implicitly).

  With JAX transformations: a SparseArray is a pytree whose index buffers are integer
  leaves, so ``jax.grad`` w.r.t. it fails with JAX's "requires real- or complex-valued
  inputs … got int32" (JAX offers no hook to explain it): use :func:`jscorch.grad`,
  which returns a SparseArray gradient with the same pattern, or
  ``jax.grad(f, allow_int=True)`` (float0 gradients for the indices). ``jax.vmap``
  maps over batch dimensions: build them with ``n_batch=`` (``js.from_dense(x,
  n_batch=1)``) or :func:`jscorch.stack`, or pass ``in_axes=None`` for an unbatched one.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[0., 2.], [-3., 0.]]))
    >>> (A > 0).todense()
    Array([[False,  True],
           [False, False]], dtype=bool)
    >>> js.grad(lambda A: (A * A).sum())(A).data
    Array([ 4., -6.], dtype=float32)
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
    data = to_device(data)
    fmt = resolve_format(format, len(shape), func=func)
    nse = data.shape[fmt.n_batch] if data.ndim > fmt.n_batch else -1
    lay = Layout.make(fmt.storage, block_view_shape(fmt, shape, func, "shape"), nse, func)
    indices = tuple(to_device(i) for i in indices)
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
    n = self.data.ndim - 1 - self._format.n_dense
    if n < 0:
      raise SparseFormatError(_split_entries_message(self))
    return n

  @property
  def n_dense(self) -> int:
    """Trailing dims stored as dense blocks (a blocked format's blocks are not dims of its
    logical shape: 0 for BSR)."""
    return self._format.n_dense - len(self._format.blocks)

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
    """The static buffer layout (format, shape, capacity).

    Raises:
      SparseFormatError: for a blocked format (BSR), whose buffers are laid out as its
        block view's: use ``A.block_view().layout``.
    """
    if self._format.blocks:
      raise SparseFormatError(
          f"SparseArray.layout: {self!r} has a blocked format; its buffers are those of its "
          "block view, and this operation does not handle blocked formats. Convert first "
          "(A.asformat('csr')), or work on the block view, A.block_view() (see docs/blocks.md "
          "for what BSR arrays support).")
    return Layout(self.format, self.shape, self.nse)

  def block_view(self) -> SparseArray:
    """A blocked array's block view: the same buffers as an unblocked array of shape
    `[*batch, *grid, *block]` (``self`` when unblocked; no data moves).

    Example:
      >>> import jax.numpy as jnp, jscorch as js
      >>> A = js.from_dense(jnp.eye(4), format=js.BSR((2, 2)))
      >>> A.block_view()
      SparseArray(float32[2, 2, 2, 2], format=CSR, nse=2, n_dense=2)
    """
    fmt = self.format
    if not fmt.blocks:
      return self
    return SparseArray._make(self.data, self.indices, fmt.storage,
                             block_view_shape(fmt, self.shape, "SparseArray.block_view"))

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
    return self.block_view().layout.index_dtype

  @property
  def nnz(self):
    """Number of entries in use (without padding), per batch element; blocks for a
    blocked format, as ``nse`` counts them."""
    return _count_entries(self.block_view().layout, self.indices)

  def pos(self, level: int) -> jax.Array:
    """The ``pos`` buffer of a compressed level."""
    return self._buffer(level, "pos")

  def crd(self, level: int) -> jax.Array:
    """The ``crd`` buffer of a compressed or singleton level."""
    return self._buffer(level, "crd")

  def _buffer(self, level, role):
    for (k, r, _), buf in zip(self.block_view().layout.index_shapes, self.indices):
      if (k, r) == (level, role):
        return buf
    raise SparseFormatError(
        f"SparseArray.{role}: level {level} of format {self.format!r} has no {role} buffer.")

  def __repr__(self):
    if self.data.ndim - 1 - self._format.n_dense < 0:    # see _split_entries_message
      return f"SparseArray(<entries split by vmap: data {self.data.shape}>)"
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
    if self._format.blocks:
      return _unblock(self.block_view().todense(), len(self._format.blocks))
    return _todense(self.layout, self.data, self.indices)

  def astype(self, dtype) -> SparseArray:
    """The same pattern with values cast to ``dtype``.

    A non-unique array whose repeated coordinates add differently in ``dtype`` (from
    bool: a logical or; from an integer: wrapping; from float16 / bfloat16: overflow
    and rounding) is coalesced first (:meth:`sum_duplicates`, same ``nse``), so the
    result is the cast of the array's own values.

    Example:
      >>> import jax.numpy as jnp, jscorch as js
      >>> NU = js.Format(js.compressed(unique=False), js.singleton(unique=False))
      >>> A = js.from_coo([[0, 0], [0, 0]], jnp.array([True, True]), (1, 1), format=NU)
      >>> A.todense(), A.astype(jnp.float32).todense()
      (Array([[ True]], dtype=bool), Array([[1.]], dtype=float32))
    """
    if not self._format.unique and not _adds_alike(self.dtype, dtype):
      return self.sum_duplicates().astype(dtype)
    return self.with_data(self.data.astype(dtype))

  @property
  def T(self) -> SparseArray:
    return self.transpose()

  def __len__(self) -> int:
    """The size of the first dimension, as ``len`` of a numpy array (0-d arrays raise)."""
    if not self.ndim:
      raise TypeError(f"SparseArray.__len__: len() of unsized object; got a 0-d {self!r}, "
                      "expected at least one dimension.")
    return self.shape[0]

  def block_until_ready(self):
    jax.block_until_ready((self.data, self.indices))
    return self

  def __neg__(self) -> SparseArray:
    return self.with_data(-self.data)

  def __pos__(self) -> SparseArray:
    return self

  # -- operators, reductions, shape, format and coalescing methods --------------------------
  # The ops layer imports this module, so jscorch._methods sets these on the class when
  # jscorch is imported (as JAX attaches jax.Array's); declared here for type checkers.
  if TYPE_CHECKING:
    def __matmul__(self, other) -> Any: ...
    def __rmatmul__(self, other) -> Any: ...
    def __mul__(self, other) -> Any: ...
    def __rmul__(self, other) -> Any: ...
    def __truediv__(self, other) -> Any: ...
    def __rtruediv__(self, other) -> Any: ...
    def __add__(self, other) -> Any: ...
    def __radd__(self, other) -> Any: ...
    def __sub__(self, other) -> Any: ...
    def __rsub__(self, other) -> Any: ...
    def __pow__(self, other) -> Any: ...
    def __rpow__(self, other) -> Any: ...
    def __abs__(self) -> SparseArray: ...
    def __getitem__(self, key) -> Any: ...
    def sum(self, axis: int | Sequence[int] | None = None, dtype=None,
            keepdims: bool = False) -> jax.Array: ...
    def max(self, axis: int | Sequence[int] | None = None,
            keepdims: bool = False) -> jax.Array: ...
    def min(self, axis: int | Sequence[int] | None = None,
            keepdims: bool = False) -> jax.Array: ...
    def mean(self, axis: int | Sequence[int] | None = None, dtype=None,
             keepdims: bool = False) -> jax.Array: ...
    def diagonal(self, offset: int = 0, axis1: int = 0, axis2: int = 1) -> jax.Array: ...
    def sum_duplicates(self, nse: int | None = None) -> SparseArray: ...
    def sort_indices(self) -> SparseArray: ...
    def eliminate_zeros(self, nse: int | None = None) -> SparseArray: ...
    def asformat(self, format: FormatLike, *, nse: int | None = None) -> SparseArray: ...
    def update_layout(self, n_batch: int | None = None, n_dense: int | None = None, *,
                      format: FormatLike | None = None, nse: int | None = None,
                      on_inefficient: str | None = "warn") -> SparseArray: ...
    def to_scipy(self) -> Any: ...
    def to_bcoo(self) -> Any: ...
    def transpose(self, axes: Sequence[int] | None = None) -> SparseArray: ...
    def reshape(self, *shape, format: FormatLike | None = None) -> SparseArray: ...
    def expand_dims(self, axis: int | Sequence[int]) -> SparseArray: ...
    def squeeze(self, axis: int | Sequence[int] | None = None) -> SparseArray: ...

  # -- array conventions: comparisons, truth value, numpy and JAX conversion ----------------
  __hash__ = None   # as jax.Array and np.ndarray: an array is not a dict key or set member

  def __eq__(self, other):
    """``A == s``: elementwise (see :func:`_compare` for which comparisons are defined)."""
    return _compare(self, other, "==")

  def __ne__(self, other):
    return _compare(self, other, "!=")

  def __lt__(self, other):
    return _compare(self, other, "<")

  def __le__(self, other):
    return _compare(self, other, "<=")

  def __gt__(self, other):
    return _compare(self, other, ">")

  def __ge__(self, other):
    return _compare(self, other, ">=")

  def __bool__(self) -> bool:
    """The truth value of a one-element array, as numpy's; other sizes raise."""
    if self.size != 1:
      what = "an empty array" if self.size == 0 else "an array with more than one element"
      raise ValueError(
          f"The truth value of {what} is ambiguous; got bool() of {self!r}. Use "
          "A.todense().any() or A.todense().all(), or A.nnz for the number of stored "
          "entries.")
    return bool(self.todense().reshape(()))

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    """``np.asarray(A)``: the dense numpy array (a host copy, so never ``copy=False``).

    Warns with :class:`SparseEfficiencyWarning` above ``2**27`` elements. Under
    ``jit`` this fails as for any traced array.
    """
    if copy is False:
      raise ValueError(
          "SparseArray.__array__: a SparseArray has no dense buffer to share; got "
          "copy=False, expected copy=None or True. Use np.asarray(A) (a dense copy).")
    if self.size > DENSE_WARN_SIZE:
      warnings.warn(
          f"np.asarray: densifying {self!r} into {self.size} elements "
          f"({self.size * jnp.dtype(self.dtype).itemsize / 2**30:.1f} GiB). Keep it sparse "
          "(A.to_scipy() for scipy) or densify a slice.", SparseEfficiencyWarning,
          stacklevel=2)
    out = np.asarray(self.todense())
    return out if dtype is None else out.astype(dtype)

  @property
  def __jax_array__(self):
    """JAX's hook for array-likes: refuses, with what to use instead (never densifies).

    ``jnp.sum(A)``, ``jnp.dot(A, x)``, ``jax.nn.relu(A)`` and Flax layers call it, and
    get a ``TypeError`` naming ``A.sum()``, ``jscorch.numpy`` and ``js.sparsify``.
    JAX's binary operators (``x + A`` with a ``jax.Array`` ``x``) look it up too:
    for them the attribute is absent, so that Python calls ``A.__radd__``.
    """
    caller = sys._getframe(1).f_globals.get("__name__")
    if caller == "jax._src.numpy.array_methods":
      raise AttributeError("__jax_array__")
    if caller in ("jax._src.core", "jax._src.dtypes"):   # abstractification (lax.*)
      self._refuse_jax_array()
    return self._refuse_jax_array

  def _refuse_jax_array(self):
    raise TypeError(
        f"a jax.numpy / jax.nn / flax function got a SparseArray ({self!r}), but jscorch "
        "never densifies implicitly. Use the SparseArray's own methods and operators "
        "(A.sum(), A.max(), A @ x, A * x), jscorch.numpy (import jscorch.numpy as jsnp; "
        "jsnp.sum(A), jsnp.dot(A, x)), or run the whole function on sparse inputs with "
        "js.sparsify(f)(A) (e.g. js.sparsify(jax.nn.relu)(A), or a Flax module). To "
        "densify on purpose, call A.todense().")

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


def is_sparse(x) -> bool:
  """True for a :class:`SparseArray`."""
  return isinstance(x, SparseArray)


def is_operand(x) -> bool:
  """True for what the operators accept: SparseArrays, arrays and Python scalars."""
  return is_sparse(x) or isinstance(
      x, (jax.Array, np.ndarray, np.generic, int, float, complex, bool)) or hasattr(
          x, "__jax_array__")


def operand_or_raise(x) -> bool:
  """:func:`is_operand` for the other operand of an operator; another library's sparse
  matrix raises (described, never printed) with its conversion."""
  hint = checks.conversion_hint(x)
  if hint:
    raise TypeError(f"SparseArray: the other operand of an arithmetic operator is not a "
                    f"jscorch array; got {checks.describe(x)}.{hint}")
  return is_operand(x)


def _unblock(x: jax.Array, n: int) -> jax.Array:
  """`[*batch, *grid, *block]` (``n`` grid and block dims) to `[*batch, *sparse]`."""
  nb = x.ndim - 2 * n
  perm = tuple(range(nb)) + tuple(a for k in range(n) for a in (nb + k, nb + n + k))
  shape = x.shape[:nb] + tuple(x.shape[nb + k] * x.shape[nb + n + k] for k in range(n))
  return jnp.transpose(x, perm).reshape(shape)


# -- array conventions (SparseArray dunders) ----------------------------------------------
DENSE_WARN_SIZE = 2 ** 27   # np.asarray(A) warns (SparseEfficiencyWarning) above this size

_COMPARISONS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
                ">": operator.gt, ">=": operator.ge}
_COMPLEMENT = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}


def _compare(A: SparseArray, other, symbol: str):
  """``A <symbol> other``, elementwise, where the result is well defined.

  * a concrete scalar ``s`` with ``0 <symbol> s`` False (``A != 0``, ``A > 0``,
    ``A == 2``): a bool SparseArray with ``A``'s format and pattern (duplicates of a
    non-unique format summed first), ``data <symbol> s`` at each stored entry;
  * a dense array (not 0-d): the dense bool array ``A.todense() <symbol> x``, as
    ``A + x`` is dense;
  * a scalar with ``0 <symbol> s`` True (``A == 0``, ``A >= 0``): ``ValueError`` (every
    implicit zero would be ``True``); a traced scalar: ``TypeError`` (the sparsity of
    the result would depend on its value); another SparseArray: ``TypeError``.
  """
  op = _COMPARISONS[symbol]
  if is_sparse(other):
    raise TypeError(
        f"SparseArray {symbol}: comparing two SparseArrays elementwise is not supported; got "
        f"{A!r} {symbol} {other!r}, expected a scalar or a dense array on one side. Compare "
        f"the dense arrays, A.todense() {symbol} B.todense(), or get a sparse mask of where "
        "they differ with (A - B) != 0.")
  hint = checks.conversion_hint(other)
  if hint:
    raise TypeError(f"SparseArray {symbol}: the other operand is not a jscorch array; got "
                    f"{checks.describe(other)}.{hint}")
  if not is_operand(other):
    return NotImplemented
  if jnp.ndim(other) > 0:
    return op(A.todense(), jnp.asarray(other))
  if not checks.is_concrete(other):
    raise TypeError(
        f"SparseArray {symbol}: the scalar is traced, so whether the result is sparse (0 "
        f"{symbol} s False) is unknown at trace time; got {A!r} {symbol} {checks.describe(other)}, "
        "expected a concrete scalar. Compare the stored values, "
        f"A.with_data(A.data {symbol} s), when 0 {symbol} s is False, or the dense array, "
        f"A.todense() {symbol} s.")
  s = np.asarray(other)
  with jax.ensure_compile_time_eval():      # jnp's semantics, as at the stored entries
    true_at_zero = bool(op(jnp.zeros((), A.dtype), other))
  if true_at_zero:
    raise ValueError(
        f"SparseArray {symbol}: A {symbol} {s.item()!r} is True at every implicit zero of A, so "
        f"the result is dense; got {A!r} {symbol} {s.item()!r}, expected a scalar s with 0 "
        f"{symbol} s False (as in A != 0, A > 0). Use the complement, A "
        f"{_COMPLEMENT[symbol]} {s.item()!r}, which is sparse, or compare densely, "
        f"A.todense() {symbol} {s.item()!r}.")
  B = A if A.format.unique else A.sum_duplicates()
  return B.with_data(op(B.data, other))


def _adds_alike(src, dst) -> bool:
  """Whether summing values in ``src`` then casting to ``dst`` equals casting then summing
  (up to float rounding): the same dtype, or a float32 / float64 / complex source cast to
  a float or complex type (not to an integer or bool, which truncates)."""
  src, dst = jnp.dtype(src), jnp.dtype(dst)
  wide = jnp.issubdtype(src, jnp.complexfloating) or (
      jnp.issubdtype(src, jnp.floating) and src.itemsize >= 4)
  return src == dst or (wide and jnp.issubdtype(dst, jnp.inexact))


def _split_entries_message(A: SparseArray) -> str:
  """The error for a SparseArray whose values lost their entry axis (vmap over it)."""
  return (
      f"SparseArray: the values have shape {tuple(A.data.shape)}, which has no axis of stored "
      f"entries; expected at least {1 + A._format.n_dense} dims ([*batch, nse, *block]). This "
      "happens when jax.vmap maps over a SparseArray without batch dimensions (n_batch=0): "
      "vmap then splits its stored entries, not its rows. Build a batched array, "
      "js.from_dense(x, n_batch=1) or js.stack([A0, A1, ...]), or pass in_axes=None for "
      "this argument.")
