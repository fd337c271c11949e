"""``conv_general_dilated`` with a sparse operand, without densifying it.

The result of a convolution is dense (each stored entry reaches a whole window of
outputs), so it is computed as a dense array from the stored entries only:

* **sparse input** (``lhs``): every stored scalar ``lhs[n, c, x]`` is scattered into
  the outputs it reaches, ``out[n, o, y] += lhs[n, c, x] * rhs[o, c, k]`` for the
  kernel offsets ``k`` with ``y * stride + k * rhs_dilation == x * lhs_dilation +
  pad_lo`` (one ``segment_sum``; work ``nse * prod(kernel) * out_features``);
* **sparse kernel** (``rhs``): every stored kernel scalar ``rhs[o, c, k]`` gathers the
  input window it multiplies (``lhs`` padded and dilated with ``lax.pad``) and the
  products are summed per output feature (work ``nse * batch * prod(out_spatial)``).

Padding (negative too), strides, both dilations, any dimension numbers and
``feature_group_count`` are supported; both operands sparse densify the kernel,
and ``batch_group_count > 1`` densifies the sparse operands, through the policy
(an error unless ``densify=True``). ``jit``, ``grad`` and ``vmap`` come from JAX:
the implementation is gathers and a ``segment_sum``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jscorch.array import is_sparse
from jscorch.ops import shape as ops_shape

from ._fusion import force
from ._interpreter import bind
from ._rules import _aval, rule


def _result_dtype(eqn, lhs, rhs):
  pref = eqn.params.get("preferred_element_type")
  return np.dtype(pref) if pref is not None else jnp.result_type(lhs.dtype, rhs.dtype)


def _to_out_spec(arr, out_spec):
  """``arr`` with dims ``(batch, *spatial, feature)`` moved to the order of ``out_spec``."""
  nsp = arr.ndim - 2
  logical = {out_spec[0]: 0, out_spec[1]: nsp + 1}
  logical.update({out_spec[2 + i]: 1 + i for i in range(nsp)})
  return jnp.transpose(arr, [logical[j] for j in range(arr.ndim)])


def _sparse_lhs(eqn, A, rhs, out_shape, dtype):
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  groups = p["feature_group_count"]
  w = jnp.transpose(rhs, rhs_spec).astype(dtype)       # [O, C / groups, *kernel]
  n_out, c_group, kernel = w.shape[0], w.shape[1], w.shape[2:]
  batch = out_shape[out_spec[0]]
  out_sp = tuple(out_shape[d] for d in out_spec[2:])
  coords, vals, valid = ops_shape.flat_entries(A)      # [N, ndim], [N], [N]
  coords = jnp.where(valid[:, None], coords, 0)
  offsets = np.array(list(np.ndindex(*kernel)), np.int32).reshape(-1, len(kernel))   # [P, nsp]
  ok = valid[:, None]
  lin = coords[:, lhs_spec[0], None]                   # output position, row-major (n, *y)
  for i, d in enumerate(lhs_spec[2:]):
    z = coords[:, d, None] * p["lhs_dilation"][i] + p["padding"][i][0]
    num = z - jnp.asarray(offsets[:, i] * p["rhs_dilation"][i])[None, :]
    s = p["window_strides"][i]
    y = num // s
    ok = ok & (num % s == 0) & (y >= 0) & (y < out_sp[i])
    lin = lin * out_sp[i] + jnp.clip(y, 0, out_sp[i] - 1)
  c = coords[:, lhs_spec[1]]
  weights = w[:, c % c_group][(slice(None), slice(None)) + tuple(offsets.T)] \
      if offsets.size else w[:, c % c_group]          # [O, N, P]
  weights = jnp.moveaxis(weights.reshape(n_out, c.shape[0], -1), 0, -1)     # [N, P, O]
  if groups > 1:
    same = (jnp.arange(n_out) // (n_out // groups))[None, :] == (c // c_group)[:, None]
    weights = weights * same[:, None, :].astype(dtype)
  contrib = vals.astype(dtype)[:, None, None] * weights * ok[..., None].astype(dtype)
  n_seg = batch * math.prod(out_sp)
  seg = jnp.where(ok, lin, n_seg).reshape(-1)
  out = jax.ops.segment_sum(contrib.reshape(-1, n_out), seg, num_segments=n_seg + 1)[:-1]
  return _to_out_spec(out.reshape((batch,) + out_sp + (n_out,)), out_spec)


def _sparse_rhs(eqn, lhs, W, out_shape, dtype):
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  groups = p["feature_group_count"]
  x = jnp.transpose(lhs, lhs_spec).astype(dtype)        # [B, C, *spatial]
  nsp = x.ndim - 2
  zero = jnp.zeros((), dtype)
  config = [(0, 0, 0), (0, 0, 0)] + [(lo, hi, ld - 1) for (lo, hi), ld in
                                     zip(p["padding"], p["lhs_dilation"])]
  x = jax.lax.pad(x, zero, config)
  coords, vals, valid = ops_shape.flat_entries(W)       # kernel scalars [E, ndim]
  coords = jnp.where(valid[:, None], coords, 0)
  o = coords[:, rhs_spec[0]]
  n_out = W.shape[rhs_spec[0]]
  chan = (o // (n_out // groups)) * W.shape[rhs_spec[1]] + coords[:, rhs_spec[1]]
  out_sp = tuple(out_shape[d] for d in out_spec[2:])
  grids = []
  for i, d in enumerate(rhs_spec[2:]):
    y = np.arange(out_sp[i]) * p["window_strides"][i]
    z = coords[:, d] * p["rhs_dilation"][i]
    shape = [1] * (nsp + 1)
    shape[1 + i] = out_sp[i]
    grids.append(z.reshape((-1,) + (1,) * nsp) + jnp.asarray(y).reshape(shape))
  chan_b = chan.reshape((-1,) + (1,) * nsp)
  window = x[(slice(None), chan_b) + tuple(grids)]       # [B, E, *out_spatial]
  scale = jnp.where(valid, vals.astype(dtype), zero).reshape((1, -1) + (1,) * nsp)
  seg = jnp.where(valid, o, n_out)
  out = jax.ops.segment_sum(jnp.moveaxis(window * scale, 1, 0), seg, num_segments=n_out + 1)
  out = jnp.moveaxis(out[:-1], 0, -1)                   # [B, *out_spatial, O]
  return _to_out_spec(out, out_spec)


@rule("conv_general_dilated")
def _conv(ctx, eqn, invals):
  lhs, rhs = (force(v) for v in invals)
  shape, _ = _aval(eqn)
  if eqn.params["batch_group_count"] != 1:
    return bind(eqn, ctx.policy.densify_operands(
        ctx.site(eqn), [lhs, rhs], "has batch_group_count > 1, which has no sparse rule"))
  dtype = _result_dtype(eqn, lhs, rhs)
  if is_sparse(lhs):
    if is_sparse(rhs):
      (rhs,) = ctx.policy.densify_operands(
          ctx.site(eqn), [rhs], "convolves two sparse operands (the sparse input is kept, "
          "the sparse kernel must be dense)")
    return [_sparse_lhs(eqn, lhs, rhs, shape, dtype)]
  return [_sparse_rhs(eqn, lhs, rhs, shape, dtype)]
