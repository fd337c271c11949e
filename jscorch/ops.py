"""numpy-like operations on SparseArrays: products, sums and differences, reductions.

Every product is a :func:`jscorch.einsum` (so it inherits the einsum's jit, vmap
and grad rules, and its kernels):

* ``A @ X``, ``X @ A`` — dense result; ``A @ B`` — a new sparse pattern;
* ``A * X`` (``X`` dense, numpy-broadcast against ``A``) and ``A * B`` — *sampled*
  at ``A``'s pattern: the result has ``A``'s format and capacity, and stores
  ``A[i] * X[i]`` at each of ``A``'s entries (``A * B`` is the intersection);
* ``A.sum(axis)`` — dense result.

``A + B`` / ``A - B`` of two sparse operands store the **union** of the patterns,
duplicates merged (:mod:`jscorch.primitives.union`); a sparse and a dense operand
add to a dense array. Scalars scale the stored values. Each function also accepts
dense operands only, and then is the ``jax.numpy`` function of the same name.

Static arguments (``nse``, ``work``, ``axis``, exponents) must be concrete under
``jit``. Padding is ignored everywhere, gradients included.
"""
from __future__ import annotations

import builtins
import math
import string
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jscorch import _static
from jscorch.array import SparseArray, is_sparse
from jscorch.einsum import einsum
from jscorch.ops_coalesce import coalesced
from jscorch.ops_shape import concatenate as concatenate  # noqa: F401 (moved; re-exported)
from jscorch.ops_unary import map_values, negative, valid_mask
from jscorch.primitives import checks, union
from jscorch.primitives._errors import CapacityRequiredError, SparseCapacityError
from jscorch.primitives.layout import Layout

_LETTERS = string.ascii_letters


# -- operand handling ---------------------------------------------------------------------
def is_operand(x) -> bool:
  """True for what the operators accept: SparseArrays, arrays and Python scalars."""
  return is_sparse(x) or isinstance(
      x, (jax.Array, np.ndarray, np.generic, int, float, complex, bool)) or hasattr(
          x, "__jax_array__")


def _dense(x, func: str, name: str) -> jax.Array:
  if not is_operand(x):
    raise TypeError(f"{func}: {name} must be an array, a scalar or a SparseArray; got "
                    f"{checks.describe(x)}." + (checks.conversion_hint(x) or
                                                " Convert it with jnp.asarray first."))
  return jnp.asarray(x)


def _no_foreign(func: str, **operands) -> None:
  """Raises for another library's sparse matrix (described, never printed) with its conversion."""
  for name, x in operands.items():
    hint = checks.conversion_hint(x)
    if hint:
      raise TypeError(f"{func}: {name} must be an array, a scalar or a SparseArray; got "
                      f"{checks.describe(x)}.{hint}")


def _shape(x) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def _broadcast_shapes(a, b, func: str) -> tuple[int, ...]:
  sa, sb = _shape(a), _shape(b)
  try:
    return tuple(np.broadcast_shapes(sa, sb))
  except ValueError:
    raise ValueError(f"{func}: operand shapes do not broadcast; got a.shape={sa}, "
                     f"b.shape={sb}, expected numpy-broadcastable shapes. Reshape the "
                     "dense operand (e.g. x[:, None] for a column).") from None


# One compiled conversion per layout (eager conversions would run op by op).
_todense = jax.jit(lambda A: A.todense())


def _broadcast_sparse(A: SparseArray, shape: tuple[int, ...], func: str) -> SparseArray:
  """``A`` broadcast to ``shape``: new leading dims become batch dims, the pattern repeats.

  Size-1 batch and block dimensions broadcast too; sparse dimensions cannot.
  """
  if A.shape == shape:
    return A
  lead = len(shape) - A.ndim
  aligned = shape[lead:]
  nb, ns = A.n_batch, A.n_sparse
  for d in range(nb, nb + ns):
    if A.shape[d] != aligned[d]:
      raise ValueError(
          f"{func}: a sparse dimension cannot broadcast; got a SparseArray of shape {A.shape} "
          f"(sparse dimensions {tuple(range(nb, nb + ns))}) against shape {shape}, expected "
          "the sparse dimensions to match. Densify it with A.todense() or reshape the "
          "other operand.")
  batch = shape[:lead] + aligned[:nb]
  data = jnp.broadcast_to(A.data, batch + (A.nse,) + aligned[nb + ns:])
  indices = [jnp.broadcast_to(i, batch + i.shape[nb:]) for i in A.indices]
  return SparseArray._make(data, indices, A.format.replace(n_batch=lead + nb), shape)


def _ids(n: int, start: int = 0) -> str:
  if start + n > len(_LETTERS):
    raise ValueError(f"jscorch: at most {len(_LETTERS)} dimensions are supported; got {n}.")
  return _LETTERS[start:start + n]


# -- products -----------------------------------------------------------------------------
def _product(a, b, a_ids: str, b_ids: str, out_ids: str, nse, work, func: str):
  """``einsum(a_ids,b_ids->out_ids)``; a missing capacity under jit is explained for ``func``."""
  try:
    return einsum(f"{a_ids},{b_ids}->{out_ids}", a, b, nse=nse, work=work)
  except CapacityRequiredError as e:
    # The einsum decides whether the result is a new pattern (and whether the join needs
    # ``work``); its "capacity needed under jit" error is re-worded here for ``func``.
    k = b.shape[-1] if b.ndim else 1
    raise CapacityRequiredError(
        f"{func}: a product of two SparseArrays has data-dependent sizes (the entries of a "
        f"sparse result, the matching entry pairs of the join); got traced operands {a!r} and "
        f"{b!r} with nse={nse}, work={work}, expected static capacities under jit. Call "
        f"js.{func}(A, B, nse=..., work=...) with nse >= the entries of the result and work >= "
        f"the matching entry pairs (at most {a.nse * builtins.min(k, b.nse)}); an eager call "
        "computes both exactly.") from e


def _product_kwargs(func: str, kwargs: dict):
  """The ``jax.numpy`` keywords a sparse product honours: returns ``preferred_element_type``."""
  unknown = {k: v for k, v in kwargs.items()
             if k not in ("precision", "preferred_element_type") and v is not None}
  if unknown:
    raise TypeError(f"{func}: {sorted(unknown)} not supported with SparseArray operands; got "
                    f"{unknown!r}. Drop them or densify with A.todense().")
  return kwargs.get("preferred_element_type")


def _cast(result, dtype):
  return result if dtype is None else result.astype(dtype)


def matmul(a, b, *, nse: int | None = None, work: int | None = None, **kwargs):
  """Matrix product with numpy's ``matmul`` rules, any operand sparse.

  ``A @ X`` and ``X @ A`` give dense arrays; ``A @ B`` of two SparseArrays gives a
  new sparse pattern (CSR-like format, batch dims kept), or a dense array where
  :func:`jscorch.einsum`'s output inference says so (CSR @ CSC: both output
  indices are dense levels). Leading dimensions broadcast (a sparse operand's
  batch dims cannot broadcast from 1); 1-D operands are vectors, as in numpy.

  Args:
    a, b: dense arrays or SparseArrays of rank >= 1.
    nse: capacity of a sparse result (static). Eager calls compute the exact
      size; under ``jit`` it is required for ``A @ B``.
    work: capacity of the join of two sparse operands (the matching entry pairs;
      static). Eager calls compute it; under ``jit`` it is required for ``A @ B``.
    **kwargs: ``jnp.matmul``'s keywords; with a sparse operand ``precision`` is
      ignored (products run at full precision) and ``preferred_element_type``
      casts the result.

  Returns:
    A dense array, or a SparseArray for sparse @ sparse (see above).

  Raises:
    ValueError: contracted sizes differ, leading shapes do not broadcast, or
      ``nse`` / ``work`` are missing under ``jit`` for sparse @ sparse.

  Example:
    >>> import jax, jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., 2.]]))
    >>> A @ jnp.ones(2)
    Array([1., 2.], dtype=float32)
    >>> C = A @ A
    >>> C.todense()
    Array([[1., 0.],
           [0., 4.]], dtype=float32)
    >>> f = jax.jit(lambda A: js.matmul(A, A, nse=2, work=2))
    >>> f(A).nse
    2
  """
  func = "matmul"
  _no_foreign(func, a=a, b=b)
  if not (is_sparse(a) or is_sparse(b)):
    return jnp.matmul(a, b, **kwargs)
  out_dtype = _product_kwargs(func, kwargs)
  a = a if is_sparse(a) else _dense(a, func, "a")
  b = b if is_sparse(b) else _dense(b, func, "b")
  if a.ndim == 0 or b.ndim == 0:
    raise ValueError(f"{func}: operands must have rank >= 1; got a.shape={a.shape}, "
                     f"b.shape={b.shape}. Use js.multiply (or *) for scalars.")
  k_a = a.shape[-1]
  k_b = b.shape[-2] if b.ndim >= 2 else b.shape[0]
  if k_a != k_b:
    raise ValueError(f"{func}: contracted dimensions differ; got a.shape={a.shape}, "
                     f"b.shape={b.shape}, expected a.shape[-1] == b.shape[-2] ({k_a} != "
                     f"{k_b}). Transpose an operand (A.T) or fix the shapes.")
  lead_a = a.shape[:-2]
  lead_b = b.shape[:-2]
  try:
    np.broadcast_shapes(lead_a, lead_b)
  except ValueError:
    raise ValueError(f"{func}: leading (batch) dimensions do not broadcast; got "
                     f"a.shape={a.shape}, b.shape={b.shape}, expected numpy-broadcastable "
                     "shapes before the last two axes.") from None
  n_lead = builtins.max(len(lead_a), len(lead_b))
  lead = _ids(n_lead)
  i, j, k = _ids(3, n_lead)
  a_ids = lead[n_lead - len(lead_a):] + (i + j if a.ndim >= 2 else j)
  b_ids = lead[n_lead - len(lead_b):] + (j + k if b.ndim >= 2 else j)
  out = lead + (i if a.ndim >= 2 else "") + (k if b.ndim >= 2 else "")
  return _cast(_product(a, b, a_ids, b_ids, out, nse, work, func), out_dtype)


def dot(a, b, *, nse: int | None = None, work: int | None = None, **kwargs):
  """``numpy.dot`` semantics with any operand sparse (see :func:`matmul`).

  Scalars multiply; otherwise the last axis of ``a`` contracts with the
  second-to-last axis of ``b`` (its only axis when 1-D); all other axes are kept,
  those of ``a`` first.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., 2.]]))
    >>> js.dot(A, jnp.array([3., 4.]))
    Array([3., 8.], dtype=float32)
  """
  func = "dot"
  _no_foreign(func, a=a, b=b)
  if not (is_sparse(a) or is_sparse(b)):
    return jnp.dot(a, b, **kwargs)
  out_dtype = _product_kwargs(func, kwargs)
  a = a if is_sparse(a) else _dense(a, func, "a")
  b = b if is_sparse(b) else _dense(b, func, "b")
  if a.ndim == 0 or b.ndim == 0:
    return _cast(multiply(a, b), out_dtype)
  cb = b.ndim - 2 if b.ndim >= 2 else 0
  if a.shape[-1] != b.shape[cb]:
    raise ValueError(f"{func}: contracted dimensions differ; got a.shape={a.shape}, "
                     f"b.shape={b.shape}, expected a.shape[-1] == b.shape[{cb}] "
                     f"({a.shape[-1]} != {b.shape[cb]}). Transpose an operand or fix the "
                     "shapes.")
  a_ids = _ids(a.ndim)
  b_ids = list(_ids(b.ndim, a.ndim))
  b_ids[cb] = a_ids[-1]
  out = a_ids[:-1] + "".join(x for d, x in enumerate(b_ids) if d != cb)
  return _cast(_product(a, b, a_ids, "".join(b_ids), out, nse, work, func), out_dtype)


def _sampled(A: SparseArray, x: jax.Array, func: str) -> SparseArray:
  """``A * x`` at ``A``'s pattern (``x`` dense, broadcast against ``A``)."""
  shape = _broadcast_shapes(A, x, func)
  A = coalesced(_broadcast_sparse(A, shape, func))
  x = x.reshape((1,) * (len(shape) - x.ndim) + x.shape)
  keep = [d for d in range(len(shape)) if x.shape[d] != 1]
  if not keep:
    return A.with_data(A.data * x.reshape(()))
  ids = _ids(len(shape))
  x = x.reshape(tuple(x.shape[d] for d in keep))
  return einsum(f"{ids},{''.join(ids[d] for d in keep)}->{ids}", A, x)


def multiply(a, b):
  """Elementwise product; with a sparse operand the result is sampled at its pattern.

  * ``A * X`` / ``X * A`` (``X`` dense, numpy-broadcast against ``A``: scalars,
    row and column vectors, extra leading dims, which become batch dims): the
    result has ``A``'s pattern and stores ``A[i] * X[i]``; ``X`` is only read at
    ``A``'s entries (an einsum, no dense intermediate).
  * ``A * B`` (both sparse, numpy-broadcast: ``[n, 1] * [n, m]``, ``[m] * [n, m]``):
    the intersection, stored at the pattern of the operand that has the result's
    shape (``A``'s when both do; entries absent from the other hold 0). When both
    broadcast (``[n, 1] * [1, m]``) the result is a new pattern, whose capacity
    must be given under ``jit`` (use :func:`jscorch.einsum` with ``nse=``).
  * ``A * s`` for a scalar ``s`` scales the stored values.

  Non-unique formats are coalesced first (the result then has the ordered,
  unique version of the format).

  Raises:
    ValueError: shapes that do not broadcast (both named), a sparse dimension
      that would have to broadcast, or two sparse operands of different shapes.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., 2.]]))
    >>> (A * jnp.array([10., 100.])).data, (2 * A).data
    (Array([ 10., 200.], dtype=float32), Array([2., 4.], dtype=float32))
  """
  func = "multiply"
  _no_foreign(func, a=a, b=b)
  sa, sb = is_sparse(a), is_sparse(b)
  if not (sa or sb):
    return jnp.multiply(a, b)
  if sa and sb:
    shape = _broadcast_shapes(a, b, func)
    out = _ids(len(shape))

    def unit_dims(x):    # size-1 dims that broadcast: squeezed away (no summed index, no join)
      lead = len(shape) - x.ndim
      return tuple(d for d, n in enumerate(x.shape) if n != shape[lead + d])

    def ids(x):
      lead = len(shape) - x.ndim
      return "".join(out[lead + d] for d in range(x.ndim) if d not in unit_dims(x))

    if not ids(a) or not ids(b):    # a one-element operand scales the other's values
      one, other = (a, b) if not ids(a) else (b, a)
      other = coalesced(_broadcast_sparse(other, shape, func))
      dtype = jnp.result_type(a.dtype, b.dtype)
      return other.with_data(other.data.astype(dtype) * _todense(one).reshape(()).astype(dtype))
    expr = f"{ids(a)},{ids(b)}->{out}"
    ua, ub = unit_dims(a), unit_dims(b)
    sq_a = coalesced(a.squeeze(ua) if ua else a)
    sq_b = coalesced(b.squeeze(ub) if ub else b)
    try:
      return einsum(expr, sq_a, sq_b)
    except CapacityRequiredError as e:
      raise CapacityRequiredError(
          f"{func}: both sparse operands broadcast, so the product has a new pattern whose "
          f"size is data-dependent; got a.shape={a.shape}, b.shape={b.shape} under jit, "
          f"expected a static capacity. Call js.einsum({expr!r}, a, b, nse=...) on the "
          "squeezed operands instead.") from e
  A, x = (a, _dense(b, func, "b")) if sa else (b, _dense(a, func, "a"))
  if x.ndim == 0:
    return A.with_data(A.data * x)
  return _sampled(A, x, func)


def divide(a, b):
  """``a / b`` where ``a`` may be sparse: the stored values divided, same pattern.

  The divisor must be dense (a scalar or an array broadcastable against ``a``);
  it is read at ``a``'s entries only. Dividing by a SparseArray would divide by
  its implicit zeros and is refused.

  Raises:
    TypeError: ``b`` is a SparseArray.
    ValueError: shapes that do not broadcast.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., 2.]]))
    >>> (A / 2).data, (A / jnp.array([[4., 1.], [1., 8.]])).data
    (Array([0.5, 1. ], dtype=float32), Array([0.25, 0.25], dtype=float32))
  """
  func = "divide"
  _no_foreign(func, a=a, b=b)
  if not (is_sparse(a) or is_sparse(b)):
    return jnp.divide(a, b)
  if is_sparse(b):
    raise TypeError(f"{func}: the divisor is a SparseArray, so its implicit zeros would be "
                    f"divisors; got b={b!r}, expected a dense array or a scalar. Call "
                    "b.todense() first.")
  x = _dense(b, func, "b")
  if x.ndim == 0:
    return a.with_data(a.data / x)
  shape = _broadcast_shapes(a, x, func)
  A = coalesced(_broadcast_sparse(a, shape, func))
  at_pattern = _sampled(A.with_data(jnp.ones(A.data.shape, x.dtype)), x, func).data
  return A.with_data(A.data / jnp.where(valid_mask(A), at_pattern, 1))


def _union(a: SparseArray, b: SparseArray, nse, func: str) -> SparseArray:
  if a.shape != b.shape:
    raise ValueError(f"{func}: sparse operands must have the same shape; got "
                     f"a.shape={a.shape}, b.shape={b.shape}, expected equal shapes (sparse "
                     "+ sparse does not broadcast). Densify one with .todense() or reshape.")
  if (a.n_batch, a.n_dense) != (b.n_batch, b.n_dense):
    raise ValueError(f"{func}: sparse operands must split their dimensions alike; got "
                     f"a.n_batch={a.n_batch}, a.n_dense={a.n_dense}, b.n_batch={b.n_batch}, "
                     f"b.n_dense={b.n_dense}, expected equal. Convert one with "
                     "js.from_dense(x, n_batch=..., n_dense=...).")
  dtype = jnp.result_type(a.dtype, b.dtype)
  a, b = a.astype(dtype), b.astype(dtype)
  fmt = union.canonical_format(a.format)
  parts = [(a.layout, a.indices), (b.layout, b.indices)]
  concrete = checks.is_concrete(*a.indices, *b.indices)
  if fmt.all_dense:
    nse = math.prod(a.layout.level_sizes)
  elif nse is not None:
    nse = _static.static_int(nse, "nse", func)
    needed = union.union_size(parts) if concrete else 0
    if needed > nse:
      raise SparseCapacityError(
          f"{func}: the union needs {needed} stored entries but its capacity is nse={nse}; "
          f"got nse={nse}, expected nse >= {needed}. Pass nse={needed} (or larger).")
  elif concrete:
    nse = union.union_size(parts)
  else:
    nse = a.nse + b.nse
  out = Layout.make(fmt, a.shape, nse, func)
  data, indices = union.union(out, [(a.layout, a.data, a.indices),
                                    (b.layout, b.data, b.indices)], func=func)
  return SparseArray._make(data, indices, fmt, a.shape)


def _add(a, b, nse, func: str, sign: int):
  _no_foreign(func, a=a, b=b)
  sa, sb = is_sparse(a), is_sparse(b)
  if not (sa or sb):
    return jnp.add(a, b) if sign > 0 else jnp.subtract(a, b)
  if sa and sb:
    return _union(a, b if sign > 0 else negative(b), nse, func)
  if nse is not None:
    raise TypeError(f"{func}: nse= sets the capacity of a sparse + sparse result; got nse={nse} "
                    "with a dense operand, whose sum is dense. Drop nse=.")
  da = _todense(a) if sa else _dense(a, func, "a")
  db = _todense(b) if sb else _dense(b, func, "b")
  _broadcast_shapes(da, db, func)
  return da + db if sign > 0 else da - db


def add(a, b, *, nse: int | None = None):
  """``a + b``; two SparseArrays give the union of their patterns, else a dense array.

  For sparse + sparse (same shape, batch and block dims) every coordinate stored
  by either operand is stored once, values summed (no concatenated duplicates);
  the result has ``a``'s format made ordered and unique. Its capacity is the exact
  union size in eager calls, ``a.nse + b.nse`` under ``jit`` (the rest is padding),
  or ``nse`` (static) when given; overflow raises eagerly and poisons under ``jit``.
  The gradient reaches both operands' values. A sparse and a dense operand (or a
  scalar) give the dense sum.

  Raises:
    ValueError: shapes that differ (sparse + sparse) or do not broadcast.
    SparseCapacityError: an eager ``nse`` below the union size.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., 2.]]))
    >>> B = js.from_dense(jnp.array([[0., 3.], [0., 4.]]))
    >>> C = A + B
    >>> C.nse, C.data
    (3, Array([1., 3., 6.], dtype=float32))
  """
  return _add(a, b, nse, "add", 1)


def union_values(a: SparseArray, b: SparseArray, *, nse: int | None = None,
                 func: str = "union_values"):
  """Both operands' values on the union of their patterns: ``(U, a_values, b_values)``.

  ``U`` is the union (as :func:`add`, same capacity rules) holding ``a``'s values;
  ``a_values`` and ``b_values`` are ``[*batch, U.nse, *block]`` with 0 where an
  operand stores nothing. Any binary function ``f`` with ``f(0, 0) == 0`` then
  gives ``U.with_data(f(a_values, b_values))``.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., 2.]]))
    >>> B = js.from_dense(jnp.array([[0., 3.], [0., 4.]]))
    >>> U, a, b = js.ops.union_values(A, B)
    >>> a, b
    (Array([1., 0., 2.], dtype=float32), Array([0., 3., 4.], dtype=float32))
  """
  ua = _union(a, b.with_data(jnp.zeros_like(b.data)), nse, func)
  ub = _union(a.with_data(jnp.zeros_like(a.data)), b, nse, func)
  return ua, ua.data, ub.data


def _extremum(a, b, nse, func: str, fn):
  _no_foreign(func, a=a, b=b)
  sa, sb = is_sparse(a), is_sparse(b)
  if sa and sb:
    U, x, y = union_values(a, b, nse=nse, func=func)
    return U.with_data(fn(x, y))
  if nse is not None:
    raise TypeError(f"{func}: nse= sets the capacity of a result of two SparseArrays; got "
                    f"nse={nse} with a dense operand. Drop nse=.")
  if not (sa or sb):
    return fn(a, b)
  A, other = (a, b) if sa else (b, a)
  if not hasattr(other, "shape") or not jnp.shape(other):
    if float(jnp.asarray(other)) == 0:     # f(x, 0) keeps implicit zeros at 0
      A = coalesced(A)                       # (not linear: duplicates summed first)
      return A.with_data(jnp.where(valid_mask(A), fn(A.data, jnp.asarray(other, A.dtype)),
                                   jnp.zeros((), A.dtype)))
  da = _todense(a) if sa else _dense(a, func, "a")
  db = _todense(b) if sb else _dense(b, func, "b")
  _broadcast_shapes(da, db, func)
  return fn(da, db)


def maximum(a, b, *, nse: int | None = None):
  """``jnp.maximum``; two SparseArrays give a SparseArray on the union of their patterns.

  Implicit zeros take part (the maximum of a stored -1 and an implicit 0 is 0).
  Capacity as in :func:`add`. ``maximum(A, 0)`` keeps ``A``'s pattern (ReLU);
  a dense operand or another scalar gives a dense result. Gradients follow
  ``jnp.maximum`` (ties split evenly).

  Raises:
    ValueError: sparse operands of different shapes or dimension splits.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., -2.]]))
    >>> B = js.from_dense(jnp.array([[0., 3.], [0., -4.]]))
    >>> js.maximum(A, B).todense()
    Array([[ 1.,  3.],
           [ 0., -2.]], dtype=float32)
  """
  return _extremum(a, b, nse, "maximum", jnp.maximum)


def minimum(a, b, *, nse: int | None = None):
  """``jnp.minimum``; see :func:`maximum`.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., -2.]]))
    >>> B = js.from_dense(jnp.array([[0., 3.], [0., -4.]]))
    >>> js.minimum(A, B).todense()
    Array([[ 0.,  0.],
           [ 0., -4.]], dtype=float32)
  """
  return _extremum(a, b, nse, "minimum", jnp.minimum)


def subtract(a, b, *, nse: int | None = None):
  """``a - b``: :func:`add` with ``b`` negated (union for two SparseArrays).

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., 2.]]))
    >>> (A - A).data, (jnp.ones((2, 2)) - A)[0]
    (Array([0., 0.], dtype=float32), Array([0., 1.], dtype=float32))
  """
  return _add(a, b, nse, "subtract", -1)


def power(a, p):
  """``a ** p``; for a sparse ``a``, ``p`` must be a static number > 0 (``0 ** p == 0``).

  Integer ``p`` uses ``lax.integer_pow``. Padding keeps value 0 and gradient 0
  (also for ``0 < p < 1``, where the derivative at 0 is infinite).

  Raises:
    ValueError: ``p <= 0`` or a non-scalar ``p`` for a sparse base.
    TypeError: ``p`` is traced or sparse.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[3., 0.], [0., 4.]]))
    >>> (A ** 2).data, (A ** 0.5).data
    (Array([ 9., 16.], dtype=float32), Array([1.7320508, 2.       ], dtype=float32))
  """
  func = "power"
  _no_foreign(func, a=a, p=p)
  if not is_sparse(a):
    if is_sparse(p):
      raise TypeError(f"{func}: the exponent is a SparseArray, so x ** 0 = 1 would fill its "
                      f"implicit zeros; got p={p!r}. Call p.todense() first.")
    return jnp.power(a, p)
  if is_sparse(p) or isinstance(p, jax.core.Tracer):
    raise TypeError(f"{func}: the exponent of a SparseArray must be a static number > 0; got "
                    f"a {'SparseArray' if is_sparse(p) else 'traced value'}, expected a Python "
                    "number. Pass it concretely, or densify with A.todense().")
  value = np.asarray(p)
  if value.ndim != 0 or not np.isreal(value):
    raise ValueError(f"{func}: the exponent of a SparseArray must be a real scalar; got "
                     f"p with shape {value.shape} and dtype {value.dtype}. Densify with "
                     "A.todense() for elementwise exponents.")
  if not value > 0:
    raise ValueError(f"{func}: a SparseArray can only be raised to a power > 0 (0 ** p must "
                     f"stay 0); got p={value.item()!r}, expected p > 0. Call A.todense() first.")
  if float(value).is_integer():
    return map_values(a, jax.lax.integer_pow, int(value))
  q = value.item()
  return map_values(a, lambda v: v ** q, singular_at_zero=q < 1)


# -- reductions and shape ---------------------------------------------------------------------
def sum(a, axis: int | Sequence[int] | None = None, dtype=None, out=None,
        keepdims: bool = False, initial=None, where=None, promote_integers: bool = True):
  """``jnp.sum``; a SparseArray gives a dense result (an einsum over its stored entries).

  ``dtype`` follows ``jnp.sum`` (bools and small integers promote to the default
  integer). Padding is ignored. ``axis`` must be static. ``out``, ``initial`` and
  ``where`` are not supported for a SparseArray.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [3., 2.]]))
    >>> A.sum(), A.sum(axis=0), A.sum(1, keepdims=True).shape
    (Array(6., dtype=float32), Array([4., 2.], dtype=float32), (2, 1))
  """
  func = "sum"
  _no_foreign(func, a=a)
  if not is_sparse(a):
    return jnp.sum(a, axis=axis, dtype=dtype, out=out, keepdims=keepdims, initial=initial,
                   where=where, promote_integers=promote_integers)
  extra = {k: v for k, v in (("out", out), ("initial", initial), ("where", where))
           if v is not None}
  if extra:
    raise TypeError(f"{func}: {sorted(extra)} not supported for a SparseArray; got "
                    f"{extra!r}. Call A.todense() first.")
  axes = _static.axes(axis, a.ndim, func)
  target = dtype or jax.eval_shape(
      lambda v: jnp.sum(v, promote_integers=promote_integers),
      jax.ShapeDtypeStruct((), a.dtype)).dtype
  A = a.astype(target) if a.dtype != target else a
  ids = _ids(a.ndim)
  result = einsum(f"{ids}->{''.join(x for d, x in enumerate(ids) if d not in axes)}", A,
                  out_format="dense")
  return jnp.expand_dims(result, axes) if keepdims else result


def transpose(a, axes: Sequence[int] | None = None):
  """Permutes dimensions (``jnp.transpose``); free for a SparseArray within dim groups.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> js.transpose(js.from_dense(jnp.eye(2)), (1, 0)).format
    Format(dense, compressed, mode_ordering=(1, 0))
  """
  if is_sparse(a):
    return a.transpose(axes)
  _no_foreign("transpose", a=a)
  return jnp.transpose(a, axes)
