"""Graphs for the model benchmark: Cora (from a file), R-MAT and stochastic block models.

Every graph is a :class:`HostGraph` of numpy arrays: a symmetric binary adjacency (scipy
CSR, sorted, no self loops), dense float32 features, labels and the training nodes, so
that every contender (jscorch, PyG, torch, plain JAX) starts from the same data.

Example:
  >>> g = sbm(1000, degree=8, features=16, classes=4)
  >>> g.num_nodes, g.x.shape, g.num_classes, bool((g.adj != g.adj.T).nnz == 0)
  (1000, (1000, 16), 4, True)
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jscorch.bench import data


@dataclasses.dataclass(frozen=True)
class HostGraph:
  """A node-classification graph on the host.

  Attributes:
    name: shown in the bench table.
    adj: scipy CSR `[n, n]` float32, symmetric, values 1, sorted, no self loops;
      row ``i`` lists the nodes that ``i`` aggregates from.
    x: features `[n, f]` float32.
    labels: int32 `[n]`.
    train: int32 node ids the loss is taken over.
    num_classes: number of classes.
  """
  name: str
  adj: object
  x: np.ndarray
  labels: np.ndarray
  train: np.ndarray
  num_classes: int

  @property
  def num_nodes(self) -> int:
    return self.adj.shape[0]

  @property
  def rows(self) -> np.ndarray:
    """The row (destination) of every stored edge, CSR order."""
    return np.repeat(np.arange(self.num_nodes, dtype=np.int32), np.diff(self.adj.indptr))

  @property
  def sparse_features(self) -> bool:
    """Whether the features are mostly zeros (under 10 % stored), like a bag of words."""
    return np.count_nonzero(self.x) < 0.1 * self.x.size

  def sparse_x(self):
    """The features as a scipy CSR matrix."""
    import scipy.sparse as sp
    return sp.csr_matrix(self.x)

  def describe(self) -> str:
    return (f"{self.name} n={self.num_nodes:,} edges={self.adj.nnz:,} "
            f"features={self.x.shape[1]} classes={self.num_classes}")


def _symmetric(rows, cols, n):
  """Binary symmetric CSR of the edges in both directions, self loops dropped."""
  import scipy.sparse as sp
  keep = rows != cols
  rows, cols = rows[keep], cols[keep]
  a = sp.coo_matrix((np.ones(2 * len(rows), np.float32),
                     (np.concatenate([rows, cols]), np.concatenate([cols, rows]))),
                    shape=(n, n)).tocsr()
  a.sum_duplicates()
  a.data[:] = 1
  a.sort_indices()
  return a


def _labelled(name, adj, labels, features, classes, seed) -> HostGraph:
  """Random features correlated with the labels, 10 % of the nodes for training."""
  rng = np.random.default_rng(seed)
  n = adj.shape[0]
  centres = rng.standard_normal((classes, features)).astype(np.float32)
  x = centres[labels] + rng.standard_normal((n, features)).astype(np.float32)
  train = np.sort(rng.choice(n, max(classes, n // 10), replace=False)).astype(np.int32)
  return HostGraph(name, adj, x, labels.astype(np.int32), train, classes)


def rmat(scale: int, edges: int, *, features: int = 128, classes: int = 16,
         seed: int = 0) -> HostGraph:
  """A symmetrised R-MAT power-law graph on ``2**scale`` nodes (``edges`` samples)."""
  m = data.rmat(scale, edges, seed=seed)
  n = m.shape[0]
  adj = _symmetric(m.rows, m.indices, n)
  labels = np.random.default_rng(seed + 1).integers(0, classes, n)
  return _labelled(f"rmat{n}", adj, labels, features, classes, seed + 2)


def sbm(n: int, *, degree: float = 10, homophily: float = 0.8, features: int = 128,
        classes: int = 16, seed: int = 0) -> HostGraph:
  """A stochastic block model: ``classes`` equal blocks, mean degree ``degree``, a fraction
  ``homophily`` of the edges inside a block. Linear in the edges (sampled, not tabled)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n)
  members = [np.flatnonzero(labels == c) for c in range(classes)]
  count = int(degree * n / 2)
  rows = rng.integers(0, n, count)
  inside = rng.random(count) < homophily
  cols = rng.integers(0, n, count)
  for c, nodes in enumerate(members):     # an inside edge: a partner from rows' own block
    pick = inside & (labels[rows] == c)
    cols[pick] = nodes[rng.integers(0, len(nodes), int(pick.sum()))]
  adj = _symmetric(rows, cols, n)
  return _labelled(f"sbm{n}", adj, labels, features, classes, seed + 1)


def load_npz(path: str) -> HostGraph:
  """A graph in jscorch's ``.npz`` schema (``docs/data.md``; e.g. Cora), features dense."""
  import scipy.sparse as sp
  with np.load(path, allow_pickle=False) as f:
    n = int(f["num_nodes"])
    adj = sp.csr_matrix((np.ones(len(f["adj_indices"]), np.float32), f["adj_indices"],
                         f["adj_indptr"]), shape=(n, n))
    feats = sp.csr_matrix((f["feat_data"], f["feat_indices"], f["feat_indptr"]),
                          shape=tuple(int(s) for s in f["feat_shape"]))
    labels = np.asarray(f["labels"], np.int32)
    train = np.sort(np.asarray(f["train_index"], np.int32))
  adj = _symmetric(*adj.nonzero(), n)
  name = path.rsplit("/", 1)[-1].removesuffix(".npz")
  return HostGraph(name, adj, np.asarray(feats.todense(), np.float32), labels, train,
                   int(labels.max()) + 1)
