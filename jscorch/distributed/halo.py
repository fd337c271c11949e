"""The halo-exchange plan of a 1-D row-sharded matrix, computed once from its pattern (host).

Shard ``s`` owns rows part ``s`` of ``A`` and the rows part ``s`` of the dense
operand ``x`` (``x`` is partitioned like ``A``'s columns). To multiply, it needs the
rows of ``x`` at the columns its entries use; those owned by shard ``t != s`` are
*halo* rows. They travel by ``jax.lax.ppermute`` along ring shifts
``d = (s - t) mod n_shards``: for each shift with any traffic, every shard sends the
rows its ``d``-th successor needs, padded to that shift's largest count ``H_d``
(a static shape). Shifts nobody needs are skipped, so a banded or well-ordered
graph exchanges with its neighbours only.

On shard ``s`` the received rows are laid out as one column space:
``[x_local (size rows) | recv_d1 (H_d1) | recv_d2 (H_d2) | ...]``. The plan maps
each stored entry's column to that space (``crd``) and, because this mapping is
not monotone in the global column, also gives the permutation ``perm`` that
keeps every row's entries sorted (the local matrix stays a valid CSR).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jscorch.distributed.partition import Partition


@dataclasses.dataclass
class HaloPlan:
  """Host arrays of a halo exchange (stacked over shards).

  Attributes:
    shifts: static ``((d, H_d), ...)`` for the ring shifts that carry traffic.
    send: `[n_shards, sum(H_d)]` local row of ``x`` to send, per shift block
      (``cols.size`` for padding: sends zeros).
    crd: `[n_shards, nse]` column of each (permuted) entry in the halo column
      space (its size for padding entries).
    perm: `[n_shards, nse]` entry order that keeps rows sorted by ``crd``.
    width: size of the halo column space, ``cols.size + sum(H_d)``.
  """
  shifts: tuple[tuple[int, int], ...]
  send: np.ndarray
  crd: np.ndarray
  perm: np.ndarray
  width: int


def plan(pos: np.ndarray, crd: np.ndarray, cols: Partition) -> HaloPlan:
  """The plan for shards with local CSR ``pos`` `[S, R + 1]`, global ``crd`` `[S, nse]`.

  Args:
    pos, crd: the stacked local CSR buffers (``crd`` holds global columns; padding
      entries hold ``cols.n``).
    cols: the partition of ``x``'s rows (``A``'s columns) over the shards.
  """
  n_shards, nse = crd.shape
  bounds = np.asarray(cols.bounds)
  needed = {}                     # (s, t) -> sorted global columns s needs from t != s
  for s in range(n_shards):
    used = np.unique(crd[s][crd[s] < cols.n])
    owner = cols.owner(used)
    for t in np.unique(owner):
      if t != s:
        needed[s, int(t)] = used[owner == t]
  shifts = []
  for d in range(1, n_shards):
    h = max((len(needed.get((s, (s - d) % n_shards), ())) for s in range(n_shards)), default=0)
    if h:
      shifts.append((d, h))
  offset = {}
  at = cols.size
  for d, h in shifts:
    offset[d] = at
    at += h
  width = at
  send = np.full((n_shards, width - cols.size), cols.size, np.int64)
  for t in range(n_shards):
    for d, _ in shifts:
      rows = needed.get(((t + d) % n_shards, t), np.zeros(0, np.int64)) - bounds[t]
      start = offset[d] - cols.size
      send[t, start:start + len(rows)] = rows
  halo_crd = np.full((n_shards, nse), width, np.int64)
  perm = np.tile(np.arange(nse), (n_shards, 1))
  for s in range(n_shards):
    c = crd[s]
    live = c < cols.n
    t = cols.owner(np.where(live, c, 0))
    mapped = np.full(nse, width, np.int64)
    own = live & (t == s)
    mapped[own] = c[own] - bounds[s]
    for tt in np.unique(t[live & (t != s)]):
      sel = live & (t == tt)
      d = (s - int(tt)) % n_shards
      mapped[sel] = offset[d] + np.searchsorted(needed[s, int(tt)], c[sel])
    row = np.repeat(np.arange(len(pos[s]) - 1), np.diff(pos[s]))
    row = np.concatenate([row, np.full(nse - len(row), len(pos[s]))])
    order = np.lexsort((mapped, row))
    perm[s] = order
    halo_crd[s] = mapped[order]
  return HaloPlan(tuple(shifts), send, halo_crd, perm, width)
