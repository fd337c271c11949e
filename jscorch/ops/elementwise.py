"""Binary elementwise ops: ``add``, ``subtract``, ``maximum``, ``minimum``, ``power``.

``A + B`` / ``A - B`` of two sparse operands store the **union** of the patterns,
duplicates merged (:mod:`jscorch.primitives.union`); a sparse and a dense operand
add to a dense array. Each function also accepts dense operands only, and then is
the ``jax.numpy`` function of the same name. ``nse`` and exponents must be
concrete under ``jit``. Padding is ignored everywhere, gradients included.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jscorch import _static
from jscorch.array import SparseArray, is_sparse
from jscorch.ops import blocks
from jscorch.ops._operands import as_dense, broadcast_shapes, densify, no_foreign
from jscorch.ops.coalesce import coalesced
from jscorch.ops.unary import map_values, negative, valid_mask
from jscorch.primitives import checks, union
from jscorch.primitives._errors import SparseCapacityError
from jscorch.primitives.layout import Layout


def _union(a: SparseArray, b: SparseArray, nse, func: str, each: bool = False):
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
  parts = [(a.layout, a.data, a.indices), (b.layout, b.data, b.indices)]
  if each:        # (U holding a's values, [a's values, b's values]): one pattern
    datas, indices = union.union_each(out, parts, func=func)
    return SparseArray._make(datas[0], indices, fmt, a.shape), datas
  data, indices = union.union(out, parts, func=func)
  return SparseArray._make(data, indices, fmt, a.shape)


def _add(a, b, nse, func: str, sign: int):
  no_foreign(func, a=a, b=b)
  sa, sb = is_sparse(a), is_sparse(b)
  if not (sa or sb):
    return jnp.add(a, b) if sign > 0 else jnp.subtract(a, b)
  if sa and sb and sign < 0:          # negated in the result's dtype (uint8 b: no wrap)
    b = negative(b.astype(jnp.result_type(a.dtype, b.dtype)))
  if sa and sb and (a.format.blocks or b.format.blocks):
    return blocks.union(a, b, func, lambda va, vb: _union(va, vb, nse, func))
  if sa and sb:
    return _union(a, b, nse, func)
  if nse is not None:
    raise TypeError(f"{func}: nse= sets the capacity of a sparse + sparse result; got nse={nse} "
                    "with a dense operand, whose sum is dense. Drop nse=.")
  da = densify(a) if sa else as_dense(a, func, "a")
  db = densify(b) if sb else as_dense(b, func, "b")
  broadcast_shapes(da, db, func)
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
    >>> U, a, b = js.ops.elementwise.union_values(A, B)
    >>> a, b
    (Array([1., 0., 2.], dtype=float32), Array([0., 3., 4.], dtype=float32))
  """
  ua, (x, y) = _union(a, b, nse, func, each=True)
  return ua, x, y


def _extremum(a, b, nse, func: str, fn):
  no_foreign(func, a=a, b=b)
  sa, sb = is_sparse(a), is_sparse(b)
  if sa and sb and (a.format.blocks or b.format.blocks):
    return blocks.union(a, b, func, lambda va, vb: _extremum(va, vb, nse, func, fn))
  if sa and sb:
    U, x, y = union_values(a, b, nse=nse, func=func)
    return U.with_data(fn(x, y))
  if nse is not None:
    raise TypeError(f"{func}: nse= sets the capacity of a result of two SparseArrays; got "
                    f"nse={nse} with a dense operand. Drop nse=.")
  if not (sa or sb):
    return fn(a, b)
  A, other = (a, b) if sa else (b, a)
  if not jnp.shape(other) and checks.is_concrete(other):
    if float(np.asarray(other)) == 0:      # f(x, 0) keeps implicit zeros at 0
      A = coalesced(A)                       # (not linear: duplicates summed first)
      dtype = jnp.result_type(A.data, other)  # jnp's promotion: int8 with 0.0 is float
      return A.with_data(jnp.where(valid_mask(A), fn(A.data.astype(dtype), jnp.zeros((), dtype)),
                                   jnp.zeros((), dtype)))
  da = densify(a) if sa else as_dense(a, func, "a")
  db = densify(b) if sb else as_dense(b, func, "b")
  broadcast_shapes(da, db, func)
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
  no_foreign(func, a=a, p=p)
  if not is_sparse(a):
    if is_sparse(p):
      raise TypeError(f"{func}: the exponent is a SparseArray, so x ** 0 = 1 would fill its "
                      f"implicit zeros; got p={p!r}. Call p.todense() first.")
    return jnp.power(a, p)
  if is_sparse(p) or not checks.is_concrete(p):
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
  # jnp's own result dtype: an int array ** 2.0 is float, bool ** 2 the default int
  dtype = jax.eval_shape(lambda v: v ** p, jax.ShapeDtypeStruct((), a.dtype)).dtype
  if dtype != a.dtype:
    a = a.astype(dtype)
  if float(value).is_integer():
    return map_values(a, jax.lax.integer_pow, int(value))
  q = value.item()
  return map_values(a, lambda v: v ** q, singular_at_zero=q < 1)
