"""Benchmark inputs: uniform and power-law (R-MAT) matrices, a random 3-tensor (numpy only)."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Csr:
  """A host CSR matrix (sorted, unique, float32 values)."""
  name: str
  shape: tuple[int, int]
  indptr: np.ndarray
  indices: np.ndarray
  data: np.ndarray

  @property
  def nnz(self) -> int:
    return int(self.indptr[-1])

  @property
  def rows(self) -> np.ndarray:
    return np.repeat(np.arange(self.shape[0], dtype=np.int32), np.diff(self.indptr))

  def scipy(self, dtype=np.float32):
    import scipy.sparse as sp
    return sp.csr_matrix((self.data.astype(dtype), self.indices, self.indptr), shape=self.shape)


def _csr_from_coo(name, rows, cols, shape, rng) -> Csr:
  key = np.unique(rows.astype(np.int64) * shape[1] + cols)
  rows, cols = (key // shape[1]).astype(np.int32), (key % shape[1]).astype(np.int32)
  indptr = np.zeros(shape[0] + 1, np.int32)
  np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
  data = rng.standard_normal(len(cols)).astype(np.float32)
  return Csr(name, shape, indptr, cols, data)


def rmat(scale: int, edges: int, seed: int = 0, probs=(0.57, 0.19, 0.19, 0.05)) -> Csr:
  """An R-MAT (Graph500-style) power-law matrix of size ``2**scale``; duplicates merged.

  Example:
    >>> m = rmat(8, 2000)
    >>> m.shape, m.nnz <= 2000, int(np.diff(m.indptr).max()) > 4 * m.nnz // 256
    ((256, 256), True, True)
  """
  rng = np.random.default_rng(seed)
  rows = np.zeros(edges, np.int64)
  cols = np.zeros(edges, np.int64)
  cut = np.cumsum(probs)
  for _ in range(scale):
    quadrant = np.searchsorted(cut, rng.random(edges))
    rows = 2 * rows + (quadrant >= 2)
    cols = 2 * cols + (quadrant % 2)
  n = 1 << scale
  return _csr_from_coo(f"rmat{n}", rows, cols, (n, n), rng)


def uniform(n: int, nnz: int, seed: int = 0, cols: int | None = None) -> Csr:
  """An ``n x cols`` matrix (square by default) with about ``nnz`` uniformly placed entries.

  Example:
    >>> m = uniform(6, 12, cols=4)
    >>> m.name, m.shape, int(m.indices.max()) < 4
    ('uniform6x4', (6, 4), True)
  """
  rng = np.random.default_rng(seed)
  m = n if cols is None else cols
  return _csr_from_coo(f"uniform{n}" if cols is None else f"uniform{n}x{m}",
                       rng.integers(0, n, nnz), rng.integers(0, m, nnz), (n, m), rng)


def tensor3(n: int, nnz: int, seed: int = 0):
  """Sorted unique coordinates `[nnz', 3]` and float32 values of an ``n^3`` tensor."""
  rng = np.random.default_rng(seed)
  flat = np.unique(rng.integers(0, n, (nnz, 3)).astype(np.int64) @ np.array([n * n, n, 1]))
  coords = np.stack([flat // (n * n), flat // n % n, flat % n], axis=1).astype(np.int32)
  return coords, rng.standard_normal(len(flat)).astype(np.float32)
