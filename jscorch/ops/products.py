"""Products of SparseArrays: ``matmul``, ``dot``, ``multiply``, ``divide``.

Every product is a :func:`jscorch.einsum` (so it inherits the einsum's jit, vmap
and grad rules, and its kernels):

* ``A @ X``, ``X @ A`` — dense result; ``A @ B`` — a new sparse pattern;
* ``A * X`` (``X`` dense, numpy-broadcast against ``A``) and ``A * B`` — *sampled*
  at ``A``'s pattern: the result has ``A``'s format and capacity, and stores
  ``A[i] * X[i]`` at each of ``A``'s entries (``A * B`` is the intersection);
* ``A / X`` — the stored values divided, same pattern.

Each function also accepts dense operands only, and then is the ``jax.numpy``
function of the same name. Static arguments (``nse``, ``work``) must be concrete
under ``jit``. Padding is ignored everywhere, gradients included.
"""
from __future__ import annotations

import builtins

import jax
import jax.numpy as jnp
import numpy as np

from jscorch.array import SparseArray, is_sparse
from jscorch.einsum import einsum
from jscorch.ops import blocks
from jscorch.ops._operands import (
  as_dense,
  broadcast_shapes,
  broadcast_sparse,
  densify,
  letters,
  no_foreign,
)
from jscorch.ops.coalesce import coalesced
from jscorch.ops.unary import valid_mask
from jscorch.primitives._errors import CapacityRequiredError


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
  no_foreign(func, a=a, b=b)
  if not (is_sparse(a) or is_sparse(b)):
    return jnp.matmul(a, b, **kwargs)
  out_dtype = _product_kwargs(func, kwargs)
  a = a if is_sparse(a) else as_dense(a, func, "a")
  b = b if is_sparse(b) else as_dense(b, func, "b")
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
  lead = letters(n_lead)
  i, j, k = letters(3, n_lead)
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
  no_foreign(func, a=a, b=b)
  if not (is_sparse(a) or is_sparse(b)):
    return jnp.dot(a, b, **kwargs)
  out_dtype = _product_kwargs(func, kwargs)
  a = a if is_sparse(a) else as_dense(a, func, "a")
  b = b if is_sparse(b) else as_dense(b, func, "b")
  if a.ndim == 0 or b.ndim == 0:
    return _cast(multiply(a, b), out_dtype)
  cb = b.ndim - 2 if b.ndim >= 2 else 0
  if a.shape[-1] != b.shape[cb]:
    raise ValueError(f"{func}: contracted dimensions differ; got a.shape={a.shape}, "
                     f"b.shape={b.shape}, expected a.shape[-1] == b.shape[{cb}] "
                     f"({a.shape[-1]} != {b.shape[cb]}). Transpose an operand or fix the "
                     "shapes.")
  a_ids = letters(a.ndim)
  b_ids = list(letters(b.ndim, a.ndim))
  b_ids[cb] = a_ids[-1]
  out = a_ids[:-1] + "".join(x for d, x in enumerate(b_ids) if d != cb)
  return _cast(_product(a, b, a_ids, "".join(b_ids), out, nse, work, func), out_dtype)


def _sampled(A: SparseArray, x: jax.Array, func: str) -> SparseArray:
  """``A * x`` at ``A``'s pattern (``x`` dense, broadcast against ``A``)."""
  shape = broadcast_shapes(A, x, func)
  A = coalesced(broadcast_sparse(A, shape, func))
  x = x.reshape((1,) * (len(shape) - x.ndim) + x.shape)
  keep = [d for d in range(len(shape)) if x.shape[d] != 1]
  if not keep:
    return A.with_data(A.data * x.reshape(()))
  ids = letters(len(shape))
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
  no_foreign(func, a=a, b=b)
  sa, sb = is_sparse(a), is_sparse(b)
  if not (sa or sb):
    return jnp.multiply(a, b)
  if blocks.is_blocked(a) or blocks.is_blocked(b):
    return blocks.multiply(a, b if is_sparse(b) else as_dense(b, func, "b"), func)
  if sa and sb:
    shape = broadcast_shapes(a, b, func)
    out = letters(len(shape))

    def unit_dims(x):    # size-1 dims that broadcast: squeezed away (no summed index, no join)
      lead = len(shape) - x.ndim
      return tuple(d for d, n in enumerate(x.shape) if n != shape[lead + d])

    def ids(x):
      lead = len(shape) - x.ndim
      return "".join(out[lead + d] for d in range(x.ndim) if d not in unit_dims(x))

    if not ids(a) or not ids(b):    # a one-element operand scales the other's values
      one, other = (a, b) if not ids(a) else (b, a)
      other = coalesced(broadcast_sparse(other, shape, func))
      dtype = jnp.result_type(a.dtype, b.dtype)
      return other.with_data(other.data.astype(dtype) * densify(one).reshape(()).astype(dtype))
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
  A, x = (a, as_dense(b, func, "b")) if sa else (b, as_dense(a, func, "a"))
  if x.ndim == 0:
    return _scaled(A, x, jnp.multiply)
  return _sampled(A, x, func)


def _scaled(A: SparseArray, x: jax.Array, op) -> SparseArray:
  """``op(A, x)`` for a scalar ``x``: the values mapped, cast first to the result dtype
  (:meth:`SparseArray.astype`, which coalesces duplicates that add differently there).
  Half-precision duplicates are summed first too: ``a * x + b * x`` overflows where
  ``(a + b) * x`` need not."""
  dtype = jax.eval_shape(op, jax.ShapeDtypeStruct((), A.dtype), x).dtype
  if dtype in (jnp.float16, jnp.bfloat16):
    A = coalesced(A)
  A = A.astype(dtype)
  return A.with_data(op(A.data, x))


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
  no_foreign(func, a=a, b=b)
  if not (is_sparse(a) or is_sparse(b)):
    return jnp.divide(a, b)
  if is_sparse(b):
    raise TypeError(f"{func}: the divisor is a SparseArray, so its implicit zeros would be "
                    f"divisors; got b={b!r}, expected a dense array or a scalar. Call "
                    "b.todense() first.")
  x = as_dense(b, func, "b")
  if x.ndim == 0:
    return _scaled(a, x, jnp.divide)
  shape = broadcast_shapes(a, x, func)
  A = coalesced(broadcast_sparse(a, shape, func))
  at_pattern = _sampled(A.with_data(jnp.ones(A.data.shape, x.dtype)), x, func).data
  return A.with_data(A.data / jnp.where(valid_mask(A), at_pattern, 1))
