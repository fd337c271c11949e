"""Transposition of sparse arrays by re-labelling: no data moves within a dimension group."""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from jscorch.array import SparseArray
from jscorch.primitives._errors import SparseFormatError


def transpose(A: SparseArray, axes: Sequence[int] | None = None) -> SparseArray:
  """See :meth:`SparseArray.transpose`."""
  if A.format.blocks:
    from jscorch.ops import blocks  # noqa: PLC0415 (the ops layer imports this module)
    return blocks.transpose(A, axes)
  func = "SparseArray.transpose"
  nd, nb, ns = A.ndim, A.n_batch, A.n_sparse
  axes = tuple(reversed(range(nd))) if axes is None else tuple(int(a) for a in axes)
  axes = tuple(a + nd if a < 0 else a for a in axes)
  if sorted(axes) != list(range(nd)):
    raise SparseFormatError(f"{func}: axes must be a permutation of range({nd}); got {axes}.")
  groups = (range(0, nb), range(nb, nb + ns), range(nb + ns, nd))
  for g in groups:
    if sorted(axes[g.start:g.stop]) != list(g):
      raise SparseFormatError(
          f"{func}: axes={axes} moves a dimension between the batch {tuple(groups[0])}, sparse "
          f"{tuple(groups[1])} and block {tuple(groups[2])} groups of {A!r}; only permutations "
          "within each group are free. Convert with js.from_dense(A.todense().transpose(axes)) "
          "or restructure with n_batch=/n_dense= first.")
  batch_perm = axes[:nb]
  sparse_perm = [a - nb for a in axes[nb:nb + ns]]
  block_perm = [a - nb - ns for a in axes[nb + ns:]]
  inverse = [0] * ns
  for new, old in enumerate(sparse_perm):
    inverse[old] = new
  fmt = A.format
  new_fmt = fmt.replace(mode_ordering=tuple(inverse[d] for d in fmt.mode_ordering))
  data = jnp.transpose(A.data, (*batch_perm, nb, *(nb + 1 + b for b in block_perm)))
  indices = tuple(jnp.transpose(i, (*batch_perm, nb)) for i in A.indices)
  shape = tuple(A.shape[a] for a in axes)
  return SparseArray._make(data, indices, new_fmt, shape)
