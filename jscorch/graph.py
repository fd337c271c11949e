"""Graph utilities on sparse adjacency matrices, the graph ``.npz`` loader and a synthetic graph.

An adjacency matrix is a square 2-D :class:`~jscorch.SparseArray` ``adj`` whose
stored values are edge weights. The layers of :mod:`jscorch.nn` compute
``out[i] = sum_j adj[i, j] * x[j]``: node ``i`` aggregates over the stored entries
of **row** ``i``. :func:`from_edge_index` puts edge ``(u, v)`` at ``adj[u, v]``; for
a directed graph in PyG's ``source -> target`` convention (node ``v`` receives
from ``u``) pass ``edge_index[::-1]`` or use ``adj.T``. Undirected graphs (both
directions stored) need neither.

Every function here except the loaders works under ``jit``, ``vmap`` and ``grad``
(differentiating through the edge weights); capacities of new patterns are static:
``adj.nse + num_nodes`` for self loops, ``2 * adj.nse`` for :func:`to_undirected`.
Padding entries (coordinates out of range) are ignored everywhere.

Example:
  >>> import jax.numpy as jnp
  >>> from jscorch import graph
  >>> adj = graph.from_edge_index(jnp.array([[0, 1, 1], [1, 0, 2]]), num_nodes=3)
  >>> adj
  SparseArray(float32[3, 3], format=CSR, nse=3)
  >>> graph.degree(adj)
  Array([1., 2., 0.], dtype=float32)
  >>> graph.gcn_norm(adj).todense()[0].round(4)
  Array([0.5   , 0.4082, 0.    ], dtype=float32)
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jscorch import _static
from jscorch._graph_util import inv_sqrt as _inv_sqrt
from jscorch._graph_util import missing_loops as _missing_loops
from jscorch._graph_util import rows_cols as _rows_cols
from jscorch.array import SparseArray, is_sparse
from jscorch.construct import from_coo
from jscorch.einsum import einsum
from jscorch.ops.coalesce import coalesced
from jscorch.primitives import convert
from jscorch.primitives._errors import SparseFormatError
from jscorch.primitives.formats import CSR, FormatLike, resolve_format
from jscorch.primitives.transfer import to_device

__all__ = [
    "Graph", "add_remaining_self_loops", "add_self_loops", "check_adjacency", "degree",
    "edge_index", "from_edge_index", "gcn_norm", "load_npz", "save_npz", "synthetic_sbm",
    "to_undirected", "default_graph",
]


# -- validation and coordinates ------------------------------------------------------------
def check_adjacency(adj, func: str) -> None:
  """Raises a clear error unless ``adj`` is a square 2-D SparseArray (no block dims).

  Args:
    adj: the candidate adjacency matrix.
    func: the public name to put in the message (e.g. ``"GCNConv"``).

  Raises:
    TypeError: ``adj`` is not a SparseArray.
    SparseFormatError: ``adj`` is not 2-D (inside ``vmap`` a batched adjacency is
      2-D) or not square.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> check_adjacency(js.eye(2), "GCNConv")
    >>> check_adjacency(js.from_dense(jnp.ones((2, 3))), "GCNConv")
    Traceback (most recent call last):
    ...
    jscorch.primitives._errors.SparseFormatError: GCNConv: the adjacency must be square ...
  """
  if not is_sparse(adj):
    raise TypeError(f"{func}: the adjacency must be a jscorch SparseArray; got "
                    f"{type(adj).__name__} with shape {getattr(adj, 'shape', None)}. Build one "
                    "with js.graph.from_edge_index, js.from_scipy or js.from_dense.")
  if adj.n_batch or adj.n_dense or adj.n_sparse != 2:
    raise SparseFormatError(
        f"{func}: the adjacency must be a 2-D sparse matrix [num_nodes, num_nodes] without "
        f"batch or block dimensions; got {adj!r}. For a batch of graphs use jax.vmap over "
        "the layer.")
  if adj.shape[0] != adj.shape[1]:
    raise SparseFormatError(
        f"{func}: the adjacency must be square [num_nodes, num_nodes] (... square); got "
        f"adj.shape={adj.shape}. Rows are the receiving nodes, columns the sending ones.")


def edge_index(adj: SparseArray) -> jax.Array:
  """The ``[2, nse]`` coordinates ``(row, col)`` of every stored entry, aligned with ``adj.data``.

  Padding entries get ``(num_rows, num_cols)`` (out of range). The inverse of
  :func:`from_edge_index` up to order and padding.

  Example:
    >>> import jax.numpy as jnp
    >>> adj = from_edge_index(jnp.array([[1, 0], [2, 1]]), num_nodes=3, nse=3)
    >>> edge_index(adj)
    Array([[0, 1, 3],
           [1, 2, 3]], dtype=int32)
  """
  return _edge_index(adj)


@jax.jit
def _edge_index(adj):
  coords = convert.storage_to_logical(adj.layout, convert.leaf_coordinates(adj.layout,
                                                                           adj.indices))
  return jnp.moveaxis(coords, -1, 0)


def _host_csr(rows, cols, values, shape, dtype=np.float32) -> SparseArray:
  """A CSR SparseArray from host (numpy) coordinates; sorts and sums duplicates on the host.

  Nothing is compiled: the buffers are built with numpy and wrapped, which keeps
  loaders and pattern builders fast.
  """
  rows = np.asarray(rows, np.int64).reshape(-1)
  cols = np.asarray(cols, np.int64).reshape(-1)
  values = np.broadcast_to(np.asarray(values, dtype), rows.shape)
  n, m = shape
  if len(rows):
    order = np.lexsort((cols, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    first = np.ones(len(rows), bool)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    starts = np.flatnonzero(first)
    values = np.add.reduceat(values, starts).astype(dtype)
    rows, cols = rows[starts], cols[starts]
  pos = np.zeros(n + 1, np.int64)
  np.cumsum(np.bincount(rows, minlength=n), out=pos[1:])
  return SparseArray.from_buffers(to_device(values, dtype),
                                  [to_device(pos, np.int32), to_device(cols, np.int32)],
                                  shape=(n, m), format="csr", check=False)


# -- construction -------------------------------------------------------------------------
def from_edge_index(edge_index, num_nodes: int | None = None, edge_weight=None, *,
                    format: FormatLike = "csr", nse: int | None = None,
                    dtype=jnp.float32) -> SparseArray:
  """The adjacency matrix with ``adj[edge_index[0, e], edge_index[1, e]] = edge_weight[e]``.

  Args:
    edge_index: integer `[2, num_edges]` (PyG layout). Repeated edges are summed.
      Under ``jit``, edges with a negative or too large node id become padding.
    num_nodes: the number of nodes (static). Default: ``edge_index.max() + 1``,
      which needs a concrete ``edge_index``.
    edge_weight: `[num_edges]` values; default ones of ``dtype``.
    format: the storage format (default CSR).
    nse: capacity (static); under ``jit`` the default is ``num_edges``.
    dtype: the value dtype when ``edge_weight`` is omitted.

  Returns:
    A `[num_nodes, num_nodes]` SparseArray.

  Raises:
    SparseFormatError: ``edge_index`` is not `[2, E]`, or a node id is out of range
      (eager calls).
    TypeError: ``num_nodes`` omitted under ``jit``.

  Example:
    >>> import jax.numpy as jnp
    >>> from_edge_index(jnp.array([[0, 1], [1, 1]]), 2).todense()
    Array([[0., 1.],
           [0., 1.]], dtype=float32)
  """
  func = "from_edge_index"
  ei = to_device(edge_index)
  if ei.ndim != 2 or ei.shape[0] != 2:
    raise SparseFormatError(f"{func}: edge_index must have shape [2, num_edges]; got "
                            f"{ei.shape}. Transpose an [num_edges, 2] array with .T.")
  concrete = not isinstance(ei, jax.core.Tracer)
  if num_nodes is None:
    if not concrete:
      raise TypeError(f"{func}: num_nodes must be given under jit (it fixes the shape); pass "
                      "num_nodes= as a static int.")
    num_nodes = int(ei.max()) + 1 if ei.size else 0
  n = _static.static_int(num_nodes, "num_nodes", func)
  w = jnp.ones(ei.shape[1], dtype) if edge_weight is None else to_device(edge_weight)
  if w.shape != (ei.shape[1],):
    raise SparseFormatError(f"{func}: edge_weight must have shape [num_edges] = "
                            f"({ei.shape[1]},); got {w.shape}.")
  if concrete and ei.size:
    lo, hi = (int(v) for v in _id_range(ei))
    if lo < 0 or hi >= n:
      raise SparseFormatError(f"{func}: node ids must be in [0, num_nodes={n}); got ids in "
                              f"[{lo}, {hi}]. Pass a larger num_nodes.")
  fmt = resolve_format(format, 2, func=func)
  if nse is None:
    # room for every edge; an eager result is then cut to the distinct edges it holds
    A = _from_edge_index(ei, w, n, fmt, None if fmt.all_dense else ei.shape[1])
    return _trimmed(A) if concrete else A
  nse = _static.static_int(nse, "nse", func)
  return _from_edge_index(ei, w, n, fmt, nse)


@jax.jit
def _id_range(ei):
  return jnp.min(ei), jnp.max(ei)


def _trimmed(A: SparseArray) -> SparseArray:
  """``A`` (freshly built, unbatched) with its capacity cut to the entries in use.

  A built array holds its used positions first at every level, so each buffer of the
  smaller layout is a prefix of ``A``'s.
  """
  has_pos = [k for k, lvl in enumerate(A.format.levels) if lvl.has_pos]
  used = int(A.pos(has_pos[-1])[-1]) if has_pos else A.nse
  if used == A.nse:
    return A
  lay = A.layout.replace(nse=used)
  indices = [buf[:shape[-1]] for buf, (_, _, shape) in zip(A.indices, lay.index_shapes)]
  return SparseArray._make(A.data[:used], indices, A.format, A.shape)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _from_edge_index(ei, w, n, fmt, nse):
  return from_coo(ei.T, w, (n, n), format=fmt, nse=nse, check=False, _func="from_edge_index")


# The utilities below are compositions of many small operations; each is one jitted
# function, so an eager call compiles once per shape instead of once per operation.
@functools.partial(jax.jit, static_argnames=("remaining", "format"))
def _self_loops(adj: SparseArray, fill_value, remaining: bool, format) -> SparseArray:
  """``adj`` plus ``fill_value`` on the diagonal as stored entries (capacity nse + n; an
  all-dense format stores every coordinate already, the diagonal included)."""
  n = adj.shape[0]
  rows, cols = _rows_cols(adj)
  if remaining:
    fill = _missing_loops(adj, fill_value)
  else:
    fill = jnp.broadcast_to(jnp.asarray(fill_value, adj.dtype), (n,))
  loop = jnp.arange(n, dtype=rows.dtype)
  coords = jnp.concatenate([jnp.stack([rows, cols], -1), jnp.stack([loop, loop], -1)])
  values = jnp.concatenate([adj.data, fill])
  fmt = resolve_format(adj.format if format is None else format, 2, func="add_self_loops")
  return from_coo(coords, values, adj.shape, format=fmt,
                  nse=None if fmt.all_dense else adj.nse + n, check=False)


def add_self_loops(adj: SparseArray, fill_value: float = 1.0, *,
                   format: FormatLike | None = None) -> SparseArray:
  """``adj + fill_value * I``: every node gets a stored self loop (existing ones are summed).

  The result has capacity ``adj.nse + num_nodes`` (static; unused slots are
  padding) and ``adj``'s format unless ``format`` is given. Differentiable with
  respect to ``adj``'s values and ``fill_value``.

  Example:
    >>> import jscorch as js
    >>> add_self_loops(js.eye(2), 0.5).todense()
    Array([[1.5, 0. ],
           [0. , 1.5]], dtype=float32)
  """
  check_adjacency(adj, "add_self_loops")
  return _self_loops(adj, fill_value, False, format)


def add_remaining_self_loops(adj: SparseArray, fill_value: float = 1.0, *,
                             format: FormatLike | None = None) -> SparseArray:
  """Adds a self loop of weight ``fill_value`` to the nodes that have none (PyG's rule).

  Existing self loops keep their weight (a 0 is added to them and merged when the
  entries are coalesced). Capacity ``adj.nse + num_nodes``; the slots of nodes that
  already had a loop are left as padding.

  Example:
    >>> import jax.numpy as jnp
    >>> adj = from_edge_index(jnp.array([[0, 0], [0, 1]]), 2, jnp.array([3., 1.]))
    >>> add_remaining_self_loops(adj).todense()
    Array([[3., 1.],
           [0., 1.]], dtype=float32)
  """
  check_adjacency(adj, "add_remaining_self_loops")
  return _self_loops(adj, fill_value, True, format)


def degree(adj: SparseArray, *, axis: int = 1, weighted: bool = False) -> jax.Array:
  """Node degrees: per row (``axis=1``, the default) or per column (``axis=0``).

  Args:
    adj: a 2-D SparseArray.
    axis: the axis summed over, as in ``numpy.sum``: 1 gives one value per row
      (the in-degree of the aggregating node in :mod:`jscorch.nn`'s convention).
    weighted: sum the stored values instead of counting stored coordinates (a
      coordinate stored more than once, in a non-unique format, counts once: the degree
      is that of the coalesced array).

  Returns:
    A dense `[num_nodes]` array of ``adj.dtype``.

  Example:
    >>> import jax.numpy as jnp
    >>> adj = from_edge_index(jnp.array([[0, 0, 1], [1, 2, 2]]), 3, jnp.array([1., 2., 4.]))
    >>> degree(adj)
    Array([2., 1., 0.], dtype=float32)
    >>> degree(adj, axis=0), degree(adj, weighted=True)
    (Array([0., 1., 2.], dtype=float32), Array([3., 4., 0.], dtype=float32))
  """
  check_adjacency(adj, "degree")
  if axis not in (0, 1, -1, -2):
    raise SparseFormatError(f"degree: axis must be 0 or 1; got axis={axis}.")
  return _degree(adj, axis in (0, -2), weighted)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _degree(adj, columns, weighted):
  if weighted:
    return einsum("ij->j" if columns else "ij->i", adj)
  if not adj.format.unique:
    adj = adj.sum_duplicates()        # a repeated coordinate is one edge
  return einsum("ij->j" if columns else "ij->i", adj.with_data(jnp.ones_like(adj.data)))


def gcn_norm(adj: SparseArray, *, add_self_loops: bool = True,
             fill_value: float = 1.0) -> SparseArray:
  """The GCN propagation matrix ``D^-1/2 (A + I) D^-1/2`` (Kipf & Welling, PyG's ``gcn_norm``).

  ``D`` holds the weighted row sums of ``A + I``; nodes of degree 0 get 0. With
  ``add_self_loops`` the loops follow PyG (:func:`add_remaining_self_loops`:
  existing self loops keep their weight). The result has ``adj``'s format and
  capacity ``adj.nse + num_nodes`` (``adj.nse`` without self loops); differentiable
  with respect to the edge weights.

  Example:
    >>> import jscorch as js
    >>> gcn_norm(js.eye(3, format="coo")).todense()[1]
    Array([0., 1., 0.], dtype=float32)
  """
  check_adjacency(adj, "gcn_norm")
  return _gcn_norm(adj, fill_value, add_self_loops)


@functools.partial(jax.jit, static_argnames=("add_self_loops",))
def _gcn_norm(adj, fill_value, add_self_loops):
  a = _self_loops(adj, fill_value, True, None) if add_self_loops else adj
  dinv = _inv_sqrt(einsum("ij->i", a))
  return einsum("ij,i,j->ij", a, dinv, dinv)


def to_undirected(adj: SparseArray, *, reduce: str = "sum") -> SparseArray:
  """A symmetric adjacency holding both ``(i, j)`` and ``(j, i)`` for every stored edge.

  Args:
    adj: a square SparseArray.
    reduce: how the two weights of an edge stored in both directions combine:
      ``"sum"`` (``A + A.T``, PyG's default) or ``"max"`` (``max(A, A.T)`` over the
      stored entries; an edge stored in one direction only keeps its weight, so a
      binary graph stays binary). Repeated entries of a non-unique format count as
      their sum, the value the array holds.

  Returns:
    A SparseArray of capacity ``2 * adj.nse`` with ``adj``'s format; with ``"max"``,
    a non-unique format becomes its sorted unique form, each edge stored once.

  Example:
    >>> import jax.numpy as jnp
    >>> adj = from_edge_index(jnp.array([[0, 1], [1, 0]]), 2)
    >>> to_undirected(adj, reduce="max").todense()
    Array([[0., 1.],
           [1., 0.]], dtype=float32)
  """
  func = "to_undirected"
  check_adjacency(adj, func)
  if reduce not in ("sum", "max"):
    raise ValueError(f"{func}: reduce must be 'sum' or 'max'; got {reduce!r}.")
  return _to_undirected(adj, reduce)


@functools.partial(jax.jit, static_argnames=("reduce",))
def _to_undirected(adj, reduce):
  if reduce == "max":               # one stored weight per edge, so the maximum is per edge
    adj = coalesced(adj)
  rows, cols = _rows_cols(adj)
  coords = jnp.concatenate([jnp.stack([rows, cols], -1), jnp.stack([cols, rows], -1)])
  values = jnp.concatenate([adj.data, adj.data])
  sym = from_coo(coords, values, adj.shape, format=adj.format, nse=2 * adj.nse, check=False)
  if reduce == "sum":
    return sym
  ones = sym.with_data(jnp.ones_like(sym.data))
  a = einsum("ij,ij->ij", ones, adj).data                   # A sampled at the union
  at = einsum("ij,ji->ij", ones, adj).data                  # A.T sampled at the union
  present = adj.with_data(jnp.ones_like(adj.data))
  pa = einsum("ij,ij->ij", ones, present).data > 0
  pt = einsum("ij,ji->ij", ones, present).data > 0
  return sym.with_data(jnp.where(pa & pt, jnp.maximum(a, at), a + at))


# -- datasets -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Graph:
  """A node-classification dataset: adjacency, features, labels and a split.

  Attributes:
    adj: `[num_nodes, num_nodes]` SparseArray (CSR), without self loops.
    features: `[num_nodes, num_features]` SparseArray (CSR) or dense array.
    labels: int32 `[num_nodes]`, classes ``0 .. num_classes - 1``.
    train_index, val_index, test_index: int32 node ids of the split.
    num_classes: number of classes.
    name: a short description.
  """
  adj: SparseArray
  features: Any
  labels: jax.Array
  train_index: jax.Array
  val_index: jax.Array
  test_index: jax.Array
  num_classes: int
  name: str = "graph"

  @property
  def num_nodes(self) -> int:
    return self.adj.shape[0]

  @property
  def num_features(self) -> int:
    return self.features.shape[1]

  @property
  def num_edges(self) -> int:
    """Stored adjacency entries (each undirected edge counts twice)."""
    return int(_count_entries(self.adj))

  def __repr__(self):
    return (f"Graph({self.name!r}: {self.num_nodes} nodes, {self.num_edges} stored edges, "
            f"{self.num_features} features, {self.num_classes} classes, split "
            f"{len(self.train_index)}/{len(self.val_index)}/{len(self.test_index)})")


_count_entries = jax.jit(lambda A: A.nnz)


_NPZ_KEYS = ("num_nodes", "adj_indptr", "adj_indices", "feat_indptr", "feat_indices",
             "feat_data", "feat_shape", "labels", "train_index", "val_index", "test_index")


def _csr(indptr, indices, data, shape, what, path):
  indptr, indices = np.asarray(indptr, np.int64), np.asarray(indices, np.int64)
  if indptr.shape != (shape[0] + 1,) or indptr[0] != 0 or indptr[-1] != len(indices) or \
      np.any(np.diff(indptr) < 0) or (len(indices) and (indices.min() < 0 or
                                                        indices.max() >= shape[1])):
    raise SparseFormatError(
        f"load_npz: {path}: {what} is not a valid CSR matrix of shape {shape}: indptr "
        f"{indptr.shape} from {indptr[:1]} to {indptr[-1:]}, {len(indices)} indices in "
        f"[{indices.min() if len(indices) else '-'}, "
        f"{indices.max() if len(indices) else '-'}].")
  if np.shape(data) != indices.shape:
    raise SparseFormatError(f"load_npz: {path}: {what} has {len(indices)} indices but "
                            f"{np.shape(data)} values.")
  rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
  return _host_csr(rows, indices, data, shape)


def load_npz(path: str | os.PathLike) -> Graph:
  """Loads a graph stored in the schema of ``docs/data.md`` (e.g. ``cora.npz``).

  Keys: ``num_nodes``; ``adj_indptr``, ``adj_indices`` (CSR adjacency, values 1);
  ``feat_indptr``, ``feat_indices``, ``feat_data``, ``feat_shape`` (CSR features);
  ``labels``; ``train_index``, ``val_index``, ``test_index``. Optional:
  ``adj_data`` (edge weights) and ``name``. Reads plain arrays only
  (``allow_pickle=False``).

  Returns:
    A :class:`Graph` with CSR ``adj`` and ``features`` (duplicates summed, sorted).

  Raises:
    FileNotFoundError: no such file.
    SparseFormatError: a key is missing or the arrays are inconsistent.

  Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.npz")
    >>> save_npz(path, synthetic_sbm(num_nodes=40, num_features=10, num_classes=2,
    ...                              train_per_class=5, seed=0))
    >>> load_npz(path)
    Graph('sbm(n=40, classes=2, seed=0)': 40 nodes, ... stored edges, 10 features, 2 classes,
          split 10/10/10)
  """
  path = os.fspath(path)
  with np.load(path, allow_pickle=False) as f:
    missing = [k for k in _NPZ_KEYS if k not in f.files]
    if missing:
      raise SparseFormatError(f"load_npz: {path} lacks key(s) {missing}; the graph schema needs "
                              f"{list(_NPZ_KEYS)} (see docs/data.md in the jscorch repository).")
    d = {k: f[k] for k in f.files}
  n = int(d["num_nodes"])
  adj_data = d.get("adj_data", np.ones(len(d["adj_indices"]), np.float32))
  adj = _csr(d["adj_indptr"], d["adj_indices"], adj_data, (n, n), "the adjacency", path)
  fshape = tuple(int(s) for s in np.asarray(d["feat_shape"]).reshape(-1))
  if len(fshape) != 2 or fshape[0] != n:
    raise SparseFormatError(f"load_npz: {path}: feat_shape must be [num_nodes={n}, "
                            f"num_features]; got {fshape}.")
  feats = _csr(d["feat_indptr"], d["feat_indices"], d["feat_data"], fshape, "the features",
               path)
  labels = np.asarray(d["labels"]).astype(np.int32)
  if labels.shape != (n,) or (n and labels.min() < 0):
    raise SparseFormatError(f"load_npz: {path}: labels must be [num_nodes={n}] ints >= 0; got "
                            f"shape {labels.shape}.")
  split = []
  for key in ("train_index", "val_index", "test_index"):
    idx = np.asarray(d[key]).astype(np.int32).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
      raise SparseFormatError(f"load_npz: {path}: {key} has node ids outside [0, {n}).")
    split.append(to_device(idx))
  name = str(d["name"]) if "name" in d else os.path.splitext(os.path.basename(path))[0]
  return Graph(adj, feats, to_device(labels), *split,
               num_classes=int(labels.max()) + 1 if n else 0, name=name)


def save_npz(path: str | os.PathLike, graph: Graph) -> None:
  """Writes ``graph`` in the schema :func:`load_npz` reads (features made CSR).

  Edge weights that are not all 1 are written as ``adj_data``.
  """
  adj_pos, adj_crd, adj_val = _host_csr_buffers(graph.adj)
  feats = graph.features
  if not is_sparse(feats):
    f = np.asarray(feats)
    r, c = np.nonzero(f)
    feats = _host_csr(r, c, f[r, c], f.shape)
  f_pos, f_crd, f_val = _host_csr_buffers(feats)
  arrays = dict(
      num_nodes=np.int64(graph.num_nodes),
      adj_indptr=adj_pos, adj_indices=adj_crd,
      feat_indptr=f_pos, feat_indices=f_crd, feat_data=f_val.astype(np.float32),
      feat_shape=np.asarray(feats.shape, np.int64),
      labels=np.asarray(graph.labels, np.int32),
      train_index=np.asarray(graph.train_index, np.int32),
      val_index=np.asarray(graph.val_index, np.int32),
      test_index=np.asarray(graph.test_index, np.int32),
      name=np.asarray(graph.name))
  if not np.all(adj_val == 1):
    arrays["adj_data"] = adj_val.astype(np.float32)
  np.savez_compressed(path, **arrays)


def _host_csr_buffers(A: SparseArray):
  """``(indptr, indices, data)`` numpy arrays of a 2-D SparseArray (converted to CSR)."""
  if A.format != CSR:
    A = A.asformat("csr")
  pos = np.asarray(A.pos(1)).astype(np.int32)
  used = int(pos[-1])
  return pos, np.asarray(A.crd(1))[:used].astype(np.int32), np.asarray(A.data)[:used]


def synthetic_sbm(num_nodes: int = 2000, num_classes: int = 5, num_features: int = 500, *,
                  avg_degree: float = 6.0, homophily: float = 0.75,
                  words_per_node: int = 12, topic_fraction: float = 0.25,
                  train_per_class: int = 20, num_val: int | None = None,
                  num_test: int | None = None, seed: int = 0) -> Graph:
  """A stochastic block model with class-correlated sparse bag-of-words features.

  Nodes get a uniform random class. An undirected edge joins two nodes of the same
  class with probability ``p_in`` and of different classes with ``p_out``, chosen
  so that the expected degree is ``avg_degree`` and a fraction ``homophily`` of the
  edges is intra-class. Each class owns ``num_features // num_classes`` "topic"
  words; each node draws ``words_per_node`` binary words (with repetition), each from its
  class's topic with probability ``topic_fraction`` and uniformly otherwise, so
  features alone are a weak signal and the graph carries the rest (as on Cora).
  The split follows Planetoid: ``train_per_class`` training nodes per class, then
  ``num_val`` (default ``num_nodes // 4``) validation and ``num_test`` (default
  ``num_nodes // 4``... capped by the remaining nodes) test nodes.

  Deterministic in ``seed``; built with numpy (not traceable).

  Returns:
    A :class:`Graph` with CSR adjacency (symmetric, binary, no self loops) and CSR
    features.

  Example:
    >>> g = synthetic_sbm(num_nodes=100, num_features=40, num_classes=4, seed=1)
    >>> g.adj.shape, g.features.shape, g.num_classes, int(g.train_index.shape[0])
    ((100, 100), (100, 40), 4, 80)
  """
  func = "synthetic_sbm"
  if num_classes < 1 or num_nodes < num_classes or num_features < num_classes:
    raise ValueError(f"{func}: need num_nodes >= num_classes >= 1 and num_features >= "
                     f"num_classes; got {num_nodes=}, {num_classes=}, {num_features=}.")
  rng = np.random.default_rng(seed)
  n, c = num_nodes, num_classes
  labels = rng.integers(0, c, n)
  labels[:c] = np.arange(c)                        # every class present
  # Expected intra-class pairs per node ~ n / c, inter-class ~ n (c - 1) / c.
  p_in = min(1.0, homophily * avg_degree / max(n / c - 1, 1))
  p_out = min(1.0, (1 - homophily) * avg_degree / max(n * (c - 1) / c, 1)) if c > 1 else 0.0
  if n <= 4000:
    iu, ju = np.triu_indices(n, 1)
    same = labels[iu] == labels[ju]
    keep = rng.random(len(iu)) < np.where(same, p_in, p_out)
    rows, cols = iu[keep], ju[keep]
  else:   # large graphs: sample candidate pairs instead of the O(n^2) table
    m = int(4 * avg_degree * n)
    rows, cols = rng.integers(0, n, m), rng.integers(0, n, m)
    same = labels[rows] == labels[cols]
    scale = n * (n - 1) / 2 / m
    keep = (rows < cols) & (rng.random(m) < np.minimum(1, np.where(same, p_in, p_out) * scale))
    rows, cols = rows[keep], cols[keep]
  adj = _host_csr(np.concatenate([rows, cols]), np.concatenate([cols, rows]), 1.0, (n, n))
  adj = adj.with_data(jnp.ones_like(adj.data))     # an edge sampled twice stays binary
  topic = num_features // c
  k = words_per_node
  from_topic = rng.random((n, k)) < topic_fraction
  own = labels[:, None] * topic + rng.integers(0, topic, (n, k))
  other = rng.integers(0, num_features, (n, k))
  words = np.where(from_topic, own, other)
  feat = _host_csr(np.repeat(np.arange(n), k), words.ravel(), 1.0, (n, num_features))
  feat = feat.with_data(jnp.ones_like(feat.data))  # a word drawn twice stays binary
  order = rng.permutation(n)
  train = np.concatenate([order[labels[order] == y][:train_per_class] for y in range(c)])
  rest = order[~np.isin(order, train)]
  num_val = n // 4 if num_val is None else num_val
  num_test = n // 4 if num_test is None else num_test
  num_val = min(num_val, len(rest) // 2)
  val, test = rest[:num_val], rest[num_val:num_val + num_test]
  return Graph(adj, feat, to_device(labels, jnp.int32),
               to_device(np.sort(train), jnp.int32), to_device(np.sort(val), jnp.int32),
               to_device(np.sort(test), jnp.int32), num_classes=c,
               name=f"sbm(n={n}, classes={c}, seed={seed})")


def default_graph() -> Graph:
  """The embedded default dataset of the demo: :func:`synthetic_sbm` with its defaults.

  2000 nodes in 5 classes, 500 binary features, ~6 neighbours per node, Planetoid-style
  split (100 / 500 / 500).
  """
  return synthetic_sbm()
