"""Static partitions of an index range into contiguous parts, balanced by nonzeros.

A :class:`Partition` cuts ``range(n)`` (the rows, or the columns, of a matrix) into
``n_parts`` contiguous parts. Part ``k`` holds ``bounds[k] <= i < bounds[k + 1]``
and is stored **padded** to ``size`` (the largest part), so every device holds
arrays of one static shape. The *node layout* of a dense array `[n, ...]` is the
padded concatenation `[n_parts * size, ...]`: index ``i`` of part ``k`` sits at
``k * size + i - bounds[k]``; padding rows hold zeros.

Everything here is host-side numpy: a partition is computed once, from a concrete
sparsity pattern, and is static (hashable) afterwards.

Example:
  >>> import numpy as np
  >>> part = Partition.balanced(np.array([8, 1, 1, 1, 1, 1, 1, 1, 1]), 2)
  >>> part.bounds, part.size
  ((0, 1, 9), 8)
  >>> part.padded_index().tolist()
  [0, 9, 9, 9, 9, 9, 9, 9, 1, 2, 3, 4, 5, 6, 7, 8]
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Partition:
  """``n`` indices cut into contiguous parts (static, hashable).

  Attributes:
    bounds: ``n_parts + 1`` non-decreasing offsets, ``bounds[0] == 0``,
      ``bounds[-1] == n``.
    size: the padded length of every part (``max(diff(bounds))``, at least 1).
  """
  bounds: tuple[int, ...]
  size: int

  @staticmethod
  def from_bounds(bounds) -> Partition:
    bounds = tuple(int(b) for b in bounds)
    assert bounds[0] == 0 and all(a <= b for a, b in zip(bounds, bounds[1:])), bounds
    return Partition(bounds, max(1, max(b - a for a, b in zip(bounds, bounds[1:]))))

  @staticmethod
  def even(n: int, n_parts: int) -> Partition:
    """Parts of (almost) equal length."""
    return Partition.from_bounds(np.linspace(0, n, n_parts + 1).round().astype(np.int64))

  @staticmethod
  def balanced(weights: np.ndarray, n_parts: int) -> Partition:
    """Contiguous parts whose largest total weight is as small as possible.

    The optimal bottleneck partition: a binary search over the largest part's
    weight with a greedy feasibility test (each test is ``n_parts`` binary
    searches in the prefix sums). When the "nearest to ``k * total / n_parts``"
    cut is as good, it is preferred, because it spreads the slack evenly instead
    of leaving it all in the last parts.

    Args:
      weights: `[n]` non-negative integers (nonzeros per row).
      n_parts: number of parts.
    """
    w = np.asarray(weights, np.int64)
    cum = np.concatenate([[0], np.cumsum(w)])
    n, total = len(w), int(cum[-1])
    if total == 0:
      return Partition.even(n, n_parts)
    nearest = np.searchsorted(cum, np.arange(n_parts + 1) * total / n_parts)
    nearest = np.clip(nearest, 0, n)
    nearest[0], nearest[-1] = 0, n
    nearest = np.maximum.accumulate(nearest)

    def greedy(cap):
      cuts, start = [0], 0
      for _ in range(n_parts):
        start = int(np.searchsorted(cum, cum[start] + cap, side="right")) - 1
        cuts.append(start)
      return cuts if start >= n else None

    lo, hi = max(-(-total // n_parts), int(w.max())), total
    while lo < hi:
      mid = (lo + hi) // 2
      if greedy(mid) is None:
        lo = mid + 1
      else:
        hi = mid
    best = np.asarray(greedy(lo))
    if np.diff(cum[nearest]).max() <= lo:
      best = nearest
    return Partition.from_bounds(best)

  @property
  def n(self) -> int:
    return self.bounds[-1]

  @property
  def n_parts(self) -> int:
    return len(self.bounds) - 1

  @property
  def padded(self) -> int:
    """Length of the node layout, ``n_parts * size``."""
    return self.n_parts * self.size

  @property
  def counts(self) -> np.ndarray:
    """`[n_parts]` number of indices in each part."""
    return np.diff(np.asarray(self.bounds, np.int64))

  def owner(self, i: np.ndarray) -> np.ndarray:
    """The part holding each index of ``i``."""
    return np.searchsorted(np.asarray(self.bounds[1:]), i, side="right")

  def position(self) -> np.ndarray:
    """`[n]`: where each index sits in the node layout."""
    i = np.arange(self.n)
    k = self.owner(i)
    return k * self.size + i - np.asarray(self.bounds)[k]

  def padded_index(self) -> np.ndarray:
    """`[n_parts * size]`: the index stored at each node-layout slot (``n`` for padding)."""
    out = np.full(self.padded, self.n, np.int64)
    out[self.position()] = np.arange(self.n)
    return out

  def valid(self) -> np.ndarray:
    """`[n_parts * size]` bool: which node-layout slots hold an index (not padding)."""
    return self.padded_index() < self.n


def imbalance(counts) -> float:
  """``max / mean`` of per-shard counts (1.0 is perfect balance)."""
  counts = np.asarray(counts, np.float64)
  mean = counts.mean() if counts.size else 0.0
  return float(counts.max() / mean) if mean > 0 else 1.0
