"""Loops of a sparsified program: ``while`` and ``scan`` (``fori_loop``) with sparse values.

A loop carry stays sparse when the loop body returns it in a layout the carry can
hold: the same shape and batch / block split, and at most the carry's capacity
``nse`` (a fixed pattern, as ``A * 0.5`` or ``relu(A)``, or a result of another
format converted into the carry's format and capacity). The index buffers are then
loop variables like the values.

* A sparse carry whose body result is dense (``x = A @ x`` started from a sparse
  ``x``) is carried dense: its initial value is densified (the body makes a dense
  array of that shape at every step anyway).
* A carry that starts dense stays dense (a sparse body result is densified).
* A body result that may not fit (a larger capacity, another batch / block split:
  the pattern would grow inside the loop) raises :class:`SparsifyError` naming the
  carry; with ``densify=True`` that carry is carried dense, with one warning.

``scan`` slices sparse ``xs`` along their leading batch dimension and stacks sparse
per-step outputs along a new leading batch dimension.
"""
from __future__ import annotations

import jax

from jscorch.array import is_sparse

from ._errors import SparsifyError, describe, todense
from ._fusion import force
from ._rules import _dense, _forced, _open, rule


def _fits(out, carry) -> bool:
  """True when the body result ``out`` can be stored in the sparse carry ``carry``."""
  return is_sparse(out) and out.shape == carry.shape and (out.n_batch, out.n_dense) == (
      carry.n_batch, carry.n_dense) and out.nse <= carry.nse


def _fit(out, carry):
  """The body result ``out`` in the type of ``carry`` (dense, or ``carry``'s layout)."""
  if not is_sparse(carry):
    out = todense(out) if is_sparse(out) else out
    return out.astype(carry.dtype) if out.dtype != carry.dtype else out
  assert _fits(out, carry), (out, carry)
  out = out.astype(carry.dtype) if out.dtype != carry.dtype else out
  return out if out.layout == carry.layout else out.asformat(carry.format, nse=carry.nse)


def _abstract(ctx, eqn, fn, *args):
  """``jax.eval_shape(fn, *args)``; a sparsify error in the body says it is a loop body."""
  try:
    return jax.eval_shape(fn, *args)
  except SparsifyError as e:
    e.add_note(f"(raised in the body of the loop {describe(ctx.site(eqn))}: in a loop body "
               "the index buffers of sparse values are traced, as under jax.jit)")
    raise


def _carry_types(ctx, eqn, step, init, *extra):
  """``init`` with each sparse carry kept sparse only when ``step``'s result for it fits.

  ``step(carries, *extra)`` returns the body's carry results. A carry made dense
  can change the body's other results, so the check repeats until nothing changes.
  """
  init = list(init)
  for _ in range(len(init) + 1):
    outs = _abstract(ctx, eqn, step, init, *extra)
    changed = False
    for k, (c, o) in enumerate(zip(init, outs)):
      if not is_sparse(c) or _fits(o, c):
        continue
      if is_sparse(o):
        why = (f"changes loop carry {k} from {c!r} into {o!r}; a sparse carry keeps its shape, "
               f"batch/block split and capacity (at most nse={c.nse}: a fixed pattern such as "
               "A * 0.5, or a fixed capacity), so its pattern cannot grow inside the loop")
        init[k] = ctx.policy.densify_operands(ctx.site(eqn), [c], why)[0]
      else:
        init[k] = todense(c)
      changed = True
    if not changed:
      return init
  raise AssertionError("the carry types of a loop reach a fixed point")   # pragma: no cover


def _slice_type(x):
  """The abstract value of one step's slice of a scanned operand (leading dim removed)."""
  return jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), x)


@rule("scan")
def _scan(ctx, eqn, invals):
  p = eqn.params
  nc, ncarry = p["num_consts"], p["num_carry"]
  vals = _forced(invals)
  consts, carry, xs = vals[:nc], vals[nc:nc + ncarry], vals[nc + ncarry:]
  xs = [_dense(ctx, eqn, x, "scans over a sparse operand without a batch dimension (scan "
               "slices a sparse operand along its leading batch dimension)")
        if is_sparse(x) and x.n_batch == 0 else x for x in xs]
  jaxpr, jconsts = _open(p["jaxpr"])

  def run(c, x):
    return _forced(ctx.eval(jaxpr, jconsts, list(consts) + list(c) + list(x)))

  carry = _carry_types(ctx, eqn, lambda c, x: run(c, x)[:ncarry], carry,
                       [_slice_type(x) for x in xs])

  def body(c, x):
    outs = run(c, x)
    return [_fit(o, t) for o, t in zip(outs[:ncarry], c)], outs[ncarry:]

  c, ys = jax.lax.scan(body, carry, xs, length=p["length"], reverse=p["reverse"],
                       unroll=p["unroll"])
  return list(c) + list(ys)


@rule("while")
def _while(ctx, eqn, invals):
  p = eqn.params
  cn, bn = p["cond_nconsts"], p["body_nconsts"]
  vals = _forced(invals)
  cconsts, bconsts, init = vals[:cn], vals[cn:cn + bn], vals[cn + bn:]
  cj, cc = _open(p["cond_jaxpr"])
  bj, bc = _open(p["body_jaxpr"])

  def run(c):
    return _forced(ctx.eval(bj, bc, list(bconsts) + list(c)))

  init = _carry_types(ctx, eqn, run, init)

  def cond_fun(c):
    return force(ctx.eval(cj, cc, list(cconsts) + list(c))[0])

  def body_fun(c):
    return [_fit(o, t) for o, t in zip(run(c), c)]

  return list(jax.lax.while_loop(cond_fun, body_fun, init))
