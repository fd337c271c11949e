"""Grouped matmuls: rows in contiguous groups, each group multiplied by its own matrix.

Two bilinear primitives, each the other's derivative, so that every order of forward
and reverse differentiation stays grouped (``jax.lax.ragged_dot``'s own rules stop at the
first reverse derivative: the transpose of its ragged-contracting form is unimplemented):

* ``grouped_matmul(x, w, sizes)`` `[rows, i] x [groups, i, o] -> [rows, o]`: row ``p`` of
  group ``g`` (rows ``sum(sizes[:g]) .. sum(sizes[:g + 1])``) is ``x[p] @ w[g]``; rows
  past the last group are 0.
* ``grouped_outer(x, y, sizes)`` `[rows, i] x [rows, o] -> [groups, i, o]`: ``out[g]`` is
  ``sum`` over group ``g``'s rows ``p`` of ``outer(x[p], y[p])``.

Both lower to XLA's ragged dot (``jax.lax.ragged_dot_general``): a grouped kernel on GPU
and TPU; on CPU XLA expands it to a dense product over all groups, so CPU callers (the
MoE layer) use the sparse einsum's kernels instead. ``vmap`` maps the primitive over the
batch (a loop).

Example:
  >>> import jax.numpy as jnp
  >>> x, w = jnp.ones((3, 2)), jnp.stack([jnp.eye(2), 2 * jnp.eye(2)])
  >>> grouped_matmul(x, w, jnp.array([1, 2], jnp.int32)).tolist()
  [[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]]
  >>> grouped_outer(x, x, jnp.array([1, 2], jnp.int32))[1].tolist()
  [[2.0, 2.0], [2.0, 2.0]]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

_HIGHEST = lax.Precision.HIGHEST
_OUTER = lax.RaggedDotDimensionNumbers(dot_dimension_numbers=(([0], [0]), ([], [])),
                                       lhs_ragged_dimensions=[0], rhs_group_dimensions=[])

grouped_matmul_p = Primitive("jscorch_grouped_matmul")
grouped_outer_p = Primitive("jscorch_grouped_outer")


def _check(func: str, x, other, sizes, other_name: str, other_shape: str):
  if x.ndim != 2 or sizes.ndim != 1 or not jnp.issubdtype(sizes.dtype, jnp.integer):
    raise ValueError(
        f"{func}: expected x [rows, i] and integer sizes [groups]; got x {x.shape}, sizes "
        f"{sizes.shape} {sizes.dtype}.")
  if other.ndim != len(other_shape.split(",")):
    raise ValueError(f"{func}: expected {other_name} [{other_shape}]; got "
                           f"{other_name} {other.shape}.")


def grouped_matmul(x, w, sizes):
  """`[rows, i] x [groups, i, o] -> [rows, o]` (see the module docstring).

  Raises:
    ValueError: ranks, or ``w`` whose groups / inner size do not match.
  """
  _check("grouped_matmul", x, w, sizes, "w", "groups, i, o")
  if w.shape[0] != sizes.shape[0] or w.shape[1] != x.shape[1]:
    raise ValueError(
        f"grouped_matmul: expected w [groups={sizes.shape[0]}, i={x.shape[1]}, o]; got w "
        f"{w.shape}. Give one matrix per group, of x's width.")
  return grouped_matmul_p.bind(x, w, sizes.astype(jnp.int32))


def grouped_outer(x, y, sizes):
  """`[rows, i] x [rows, o] -> [groups, i, o]` (see the module docstring).

  Raises:
    ValueError: ranks, or ``y`` with another row count than ``x``.
  """
  _check("grouped_outer", x, y, sizes, "y", "rows, o")
  if y.shape[0] != x.shape[0]:
    raise ValueError(f"grouped_outer: expected y [rows={x.shape[0]}, o]; got y "
                           f"{y.shape}.")
  return grouped_outer_p.bind(x, y, sizes.astype(jnp.int32))


# -- abstract evaluation and lowering ----------------------------------------------------------
def _matmul_abstract(x, w, sizes):
  return jax.core.ShapedArray((x.shape[0], w.shape[2]), jnp.result_type(x.dtype, w.dtype))


def _outer_abstract(x, y, sizes):
  return jax.core.ShapedArray((sizes.shape[0], x.shape[1], y.shape[1]),
                              jnp.result_type(x.dtype, y.dtype))


def _matmul_impl(x, w, sizes):
  dtype = jnp.result_type(x, w)
  return lax.ragged_dot(x.astype(dtype), w.astype(dtype), sizes, precision=_HIGHEST)


def _outer_impl(x, y, sizes):
  dtype = jnp.result_type(x, y)
  return lax.ragged_dot_general(x.astype(dtype), y.astype(dtype), sizes, _OUTER,
                                precision=_HIGHEST)


# -- differentiation: each primitive is linear in its first two operands ----------------------
def _bilinear_jvp(prim):
  def jvp(primals, tangents):
    a, b, sizes = primals
    ta, tb, _ = tangents
    out = prim.bind(a, b, sizes)
    terms = []
    if type(ta) is not ad.Zero:
      terms.append(prim.bind(ta, b, sizes))
    if type(tb) is not ad.Zero:
      terms.append(prim.bind(a, tb, sizes))
    if not terms:
      return out, ad.Zero.from_primal_value(out)
    return out, sum(terms[1:], terms[0])
  return jvp


def _matmul_transpose(ct, x, w, sizes):
  """``out = x @ w[g]``: ``ct_x = ct @ w[g]^T``, ``ct_w[g] = sum x^T ct``."""
  if type(ct) is ad.Zero:
    return None, None, None
  ct_x = grouped_matmul_p.bind(ct, jnp.swapaxes(w, 1, 2), sizes) \
      if ad.is_undefined_primal(x) else None
  ct_w = grouped_outer_p.bind(x, ct, sizes) if ad.is_undefined_primal(w) else None
  return ct_x, ct_w, None


def _outer_transpose(ct, x, y, sizes):
  """``out[g] = sum x ⊗ y``: ``ct_x = y @ ct[g]^T``, ``ct_y = x @ ct[g]``."""
  if type(ct) is ad.Zero:
    return None, None, None
  ct_x = grouped_matmul_p.bind(y, jnp.swapaxes(ct, 1, 2), sizes) \
      if ad.is_undefined_primal(x) else None
  ct_y = grouped_matmul_p.bind(x, ct, sizes) if ad.is_undefined_primal(y) else None
  return ct_x, ct_y, None


def _batched(prim):
  """A loop over the batch (each element has its own groups)."""
  def rule(args, dims):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    moved = [jnp.broadcast_to(a, (size,) + a.shape) if d is None
             else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    return lax.map(lambda one: prim.bind(*one), tuple(moved)), 0
  return rule


for _prim, _abstract, _impl, _transpose in (
    (grouped_matmul_p, _matmul_abstract, _matmul_impl, _matmul_transpose),
    (grouped_outer_p, _outer_abstract, _outer_impl, _outer_transpose)):
  _prim.def_abstract_eval(_abstract)
  _prim.def_impl(_impl)
  mlir.register_lowering(_prim, mlir.lower_fun(_impl, multiple_results=False))
  ad.primitive_jvps[_prim] = _bilinear_jvp(_prim)
  ad.primitive_transposes[_prim] = _transpose
  batching.primitive_batchers[_prim] = _batched(_prim)
