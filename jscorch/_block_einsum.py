"""``js.einsum`` with blocked operands (BSR): the same einsum on the block views.

Every index that a blocked operand stores with block ``b`` splits into an outer index
(its block coordinate, size ``n / b``) and an inner one (the offset, size ``b``): the
blocked operand takes part as its block view (outer indices sparse, inner ones its
block dims), a dense operand's axis is reshaped to the pair, and an unblocked sparse
operand sharing the index is converted to the blocked version of its format (block 1
on its other dims). The result is reshaped back (dense), or read as blocked (a
sampled output at a blocked pattern; a new pattern, BSR by default for a 2-D product
of sparse operands, as CSR for unblocked ones): ``ij,jk->ik`` with
``A`` BSR ``(bm, bk)`` runs ``IJab,Jbk->Iak`` on ``A``'s block view and ``X``
reshaped to `[K/bk, bk, n]`. ``nse`` and ``work`` count blocks and block pairs.

Example:
  >>> import jax.numpy as jnp, jscorch as js
  >>> A = js.from_dense(jnp.eye(4), format=js.BSR((2, 2)))
  >>> js.einsum("ij,jk->ik", A, jnp.ones((4, 3)))[:, 0]
  Array([1., 1., 1., 1.], dtype=float32)
"""
from __future__ import annotations

import string

import jax.numpy as jnp

from jscorch.array import SparseArray, is_sparse
from jscorch.ops.blocks import from_view, is_blocked
from jscorch.primitives.formats import CSR, Format, blocked, resolve_format

_LETTERS = string.ascii_letters


def _block_sizes(ops, in_ids, func: str) -> dict:
  """The block of every index a blocked operand stores (1 on the other sparse dims of an
  unblocked sparse operand that shares one); raises on two different blocks."""
  block: dict = {}

  def note(i, b, x):
    if block.setdefault(i, b) != b:
      raise ValueError(
          f"{func}: an index is blocked by {block[i]} in one operand and by {b} in {x!r}; "
          "the blocks of a shared index must agree. Convert one operand with "
          ".asformat(js.blocked(base, block)).")

  for x, ids in zip(ops, in_ids):
    if is_blocked(x):
      for i, b in zip(ids[x.n_batch:], x.format.blocks):
        note(i, b, x)
  changed = True
  while changed:
    changed = False
    for x, ids in zip(ops, in_ids):
      if is_sparse(x) and not is_blocked(x):
        sparse = ids[x.n_batch:x.n_batch + x.n_sparse]
        if any(i in block for i in sparse):
          for i in sparse:
            changed |= i not in block
            block.setdefault(i, 1)
  return block


def _as_blocked(x: SparseArray, ids, block: dict, func: str) -> SparseArray:
  """An unblocked sparse operand whose sparse indices are blocked elsewhere, converted."""
  nb, ns = x.n_batch, x.n_sparse
  if x.n_dense or any(i in block for i in ids[:nb]):
    raise ValueError(
        f"{func}: {x!r} shares an index with a blocked operand on a batch or block dim; "
        "only sparse dims can be blocked. Convert it with .todense() or the blocked operand "
        "with .asformat('csr').")
  fmt = blocked(x.format.replace(n_batch=0), tuple(block[i] for i in ids[nb:nb + ns]))
  return x.asformat(fmt.replace(n_batch=nb))


def block_einsum(einsum, ops, in_ids, out_ids, sizes, out_format, nse, work, func: str):
  """``einsum`` (the public function) of ``ops`` where some are blocked (module docstring)."""
  block = _block_sizes(ops, in_ids, func)
  letters = iter(_LETTERS)
  outer = {i: next(letters) for ids in list(in_ids) + [out_ids] for i in ids}
  inner = {i: next(letters) for i in block}
  terms, args = [], []
  for x, ids in zip(ops, in_ids):
    if is_sparse(x) and not is_blocked(x) and any(i in block for i in ids):
      x = _as_blocked(x, ids, block, func)
    if is_blocked(x):
      nb = x.n_batch
      terms.append("".join(outer[i] for i in ids) + "".join(inner[i] for i in ids[nb:]))
      args.append(x.block_view())
    elif is_sparse(x):
      terms.append("".join(outer[i] for i in ids))
      args.append(x)
    else:
      split = []
      for i, n in zip(ids, x.shape):
        split += [n // block[i] if n != 1 else 1, block[i] if n != 1 else 1] if i in block \
            else [n]
      terms.append("".join(outer[i] + inner.get(i, "") for i in ids))
      args.append(jnp.reshape(x, split))
  n_sparse = sum(1 for x in ops if is_sparse(x))
  if out_format is None and n_sparse >= 2 and len(out_ids) == 2 and all(
      i in block for i in out_ids) and not any(
      is_sparse(x) and sorted(ids) == sorted(out_ids) for x, ids in zip(ops, in_ids)):
    out_format = blocked(CSR, tuple(block[i] for i in out_ids))    # BSR @ BSR: BSR
  fmt = _view_format(out_format, out_ids, block, func)
  grid_first = fmt not in (None, "dense") or n_sparse >= 2 or any(
      is_sparse(x) and sorted(ids) == sorted(out_ids) for x, ids in zip(ops, in_ids))
  if grid_first:
    out = "".join(outer[i] for i in out_ids) + "".join(inner[i] for i in out_ids if i in block)
  else:
    out = "".join(outer[i] + inner.get(i, "") for i in out_ids)
  result = einsum(f"{','.join(terms)}->{out}", *args,
                  out_format=fmt if isinstance(fmt, (Format, str)) else None, nse=nse, work=work)
  if is_sparse(result):
    result = from_view(result, sum(1 for i in out_ids if i in block))
  else:
    adjacent = "".join(outer[i] + inner.get(i, "") for i in out_ids)
    result = jnp.transpose(result, [out.index(c) for c in adjacent]) if out != adjacent \
        else result
    result = result.reshape(tuple(sizes[i] for i in out_ids))
  if isinstance(out_format, Format) and not out_format.blocks or \
      isinstance(out_format, str) and out_format.lower() != "dense":
    return _stored_in(result, out_format, nse)
  return result


def _view_format(out_format, out_ids, block: dict, func: str):
  """The ``out_format`` of the einsum on the block views: None / ``"dense"`` as given, a
  blocked format's block view format; None for an unblocked sparse format (the result is
  converted afterwards)."""
  if out_format is None or isinstance(out_format, str) and out_format.lower() == "dense":
    return out_format
  if isinstance(out_format, Format) and out_format.blocks:
    want = tuple(block.get(i) for i in out_ids[len(out_ids) - len(out_format.blocks):])
    if want != out_format.blocks:
      raise ValueError(
          f"{func}: out_format={out_format!r} has blocks {out_format.blocks} but the operands "
          f"block the output's sparse indices by {want}; expected the same blocks. Pass "
          "out_format=None (the blocks follow the operands) or convert the result.")
    return out_format.storage
  return None


def _stored_in(result, out_format, nse):
  """A blocked einsum's result stored in an unblocked ``out_format``."""
  from jscorch.construct import from_dense  # noqa: PLC0415 (construct imports the ops layer)
  if is_sparse(result):
    fmt = resolve_format(out_format, result.ndim, n_batch=result.n_batch, func="einsum")
    return result.asformat(fmt, nse=nse)
  return from_dense(result, out_format, nse=nse)
