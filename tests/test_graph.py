"""Tests of ``jscorch.graph``: utilities vs numpy/scipy, the npz loader, the synthetic graph."""
from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import jscorch as js
import util
from jscorch import graph

sys.path.insert(0, str(Path(__file__).resolve().parent / "nn"))
import layer_util as lu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORA = ROOT.parent / "shared" / "data" / "cora.npz"
N = 6


def _adjacency(seed, fmt="csr", dtype=np.float32, positive=True):
  return lu.random_adjacency(seed, N, format=fmt, dtype=dtype, positive=positive)


# -- construction -----------------------------------------------------------------------------
def test_from_edge_index_matches_scipy_and_sums_duplicates():
  ei = np.array([[0, 2, 2, 5, 0], [1, 3, 3, 0, 1]])
  w = np.array([1., 2., 3., 4., 5.], np.float32)
  adj = graph.from_edge_index(ei, num_nodes=N, edge_weight=w)
  expected = sp.coo_array((w, (ei[0], ei[1])), shape=(N, N)).toarray()
  assert adj.format == js.CSR and adj.nse == 3
  np.testing.assert_array_equal(adj.to_scipy().toarray(), expected)
  assert graph.from_edge_index(ei).shape == (6, 6)          # num_nodes = max id + 1
  coo = graph.from_edge_index(ei, N, w, format="coo", nse=5)
  assert coo.format == js.COO and coo.nse == 5
  np.testing.assert_array_equal(lu.todense(coo.asformat("csr")), expected)
  # Under jit num_nodes is required and out-of-range ids become padding.
  f = jax.jit(lambda ei: graph.from_edge_index(ei, num_nodes=N, nse=5))
  bad = np.array([[0, 9], [1, 1]])
  np.testing.assert_array_equal(np.asarray(f(bad).data), [1, 0, 0, 0, 0])


def test_from_edge_index_errors():
  with pytest.raises(js.SparseFormatError, match=r"from_edge_index: edge_index must have "
                     r"shape \[2, num_edges\]; got \(3, 2\)"):
    graph.from_edge_index(np.zeros((3, 2), int), 4)
  with pytest.raises(js.SparseFormatError, match=r"from_edge_index: node ids must be in "
                     r"\[0, num_nodes=3\); got ids in \[0, 5\]"):
    graph.from_edge_index(np.array([[0, 5], [1, 1]]), 3)
  with pytest.raises(TypeError, match="from_edge_index: num_nodes must be given under jit"):
    jax.jit(graph.from_edge_index)(np.array([[0], [1]]))
  with pytest.raises(js.SparseFormatError, match=r"from_edge_index: edge_weight must have "
                     r"shape \[num_edges\] = \(2,\); got \(3,\)"):
    graph.from_edge_index(np.array([[0, 1], [1, 0]]), 2, np.ones(3))


def test_edge_index_is_aligned_with_data():
  adj, a = _adjacency(0, "coo")
  ei = np.asarray(graph.edge_index(adj))
  data = np.asarray(adj.data)
  used = ei[0] < N
  assert ei.shape == (2, adj.nse) and np.all(ei[:, ~used] == N)
  np.testing.assert_array_equal(a[ei[0, used], ei[1, used]], data[used])


# -- self loops, degree, normalisation ------------------------------------------------------------
@pytest.mark.parametrize("fmt", lu.GRAPH_FORMATS)
def test_self_loops_match_numpy(fmt):
  adj, a = _adjacency(1, fmt)                  # node 0 has a self loop, the others none
  plus = graph.add_self_loops(adj, 0.5)
  assert plus.nse == adj.nse + N and plus.format == adj.format
  np.testing.assert_allclose(lu.todense(plus), a + 0.5 * np.eye(N), rtol=1e-6)
  rem = graph.add_remaining_self_loops(adj, 2.0)
  expected = a.copy()
  expected[np.arange(1, N), np.arange(1, N)] = 2.0
  np.testing.assert_allclose(lu.todense(rem), expected, rtol=1e-6)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["row_major", "col_major"])
def test_self_loops_of_an_all_dense_adjacency(order):
  """An all-dense adjacency stores every coordinate, its diagonal included: every node has
  a stored loop (``add_remaining_self_loops`` keeps the weights), ``add_self_loops`` adds
  to the diagonal, and the format (fixed capacity) is kept; jit; a CSR adjacency given an
  all-dense ``format=``; ``gcn_norm`` of it."""
  fmt = js.Format(js.dense, js.dense, mode_ordering=order)
  adj, a = _adjacency(4, "csr")
  A = js.from_dense(a, format=fmt)
  rem = jax.jit(graph.add_remaining_self_loops)(A)
  assert rem.format == fmt
  np.testing.assert_array_equal(lu.todense(rem), a)
  plus = graph.add_self_loops(A, 0.5)
  assert plus.format == fmt
  np.testing.assert_allclose(lu.todense(plus), a + 0.5 * np.eye(N), rtol=1e-6)
  dense = graph.add_self_loops(adj, 0.5, format=fmt)
  assert dense.format == fmt
  np.testing.assert_allclose(lu.todense(dense), a + 0.5 * np.eye(N), rtol=1e-6)
  np.testing.assert_allclose(lu.todense(graph.gcn_norm(A)),      # no loop is missing
                             gcn_norm_ref(a, add_self_loops=False), rtol=1e-5)
  rows, cols = np.nonzero(a)
  built = graph.from_edge_index(np.stack([rows, cols]), N, a[rows, cols], format=fmt)
  assert built.format == fmt
  np.testing.assert_array_equal(lu.todense(built), a)


@pytest.mark.parametrize("fmt", ["csr", "coo"])
def test_missing_loops_counts_stored_diagonal_entries(fmt):
  """A node has a loop when a diagonal entry is stored, whatever its weight (0 included);
  padding entries are no loops. Eager and jit."""
  from jscorch._graph_util import missing_loops
  rows = np.array([0, 1, 1, 3, 3, 4, 5], np.int32)
  cols = np.array([0, 2, 1, 3, 3, 0, 5], np.int32)
  vals = np.array([2.0, 1.0, 0.0, 1.5, -1.5, 3.0, 4.0], np.float32)    # loop at 1 stores 0
  # (3, 3) twice, summed to a stored 0; three padding entries
  adj = js.from_coo(np.stack([rows, cols], 1), vals, (N, N), format=fmt, nse=len(rows) + 3)
  want = np.array([0, 0, 7, 0, 7, 0], np.float32)                # nodes 2 and 4: no loop
  np.testing.assert_array_equal(missing_loops(adj, 7.0), want)
  np.testing.assert_array_equal(jax.jit(lambda a: missing_loops(a, 7.0))(adj), want)


def test_degree_matches_numpy():
  adj, a = _adjacency(2, "csc", positive=False)
  np.testing.assert_array_equal(graph.degree(adj), (a != 0).sum(1))
  np.testing.assert_array_equal(graph.degree(adj, axis=0), (a != 0).sum(0))
  np.testing.assert_allclose(graph.degree(adj, weighted=True), a.sum(1), rtol=1e-6)
  with pytest.raises(js.SparseFormatError, match="degree: axis must be 0 or 1; got axis=2"):
    graph.degree(adj, axis=2)


def test_degree_counts_a_repeated_coordinate_once():
  """A non-unique adjacency has the degrees of its coalesced array (one edge per
  coordinate, as a sharded adjacency, which is coalesced when built, counts them)."""
  rng = np.random.default_rng(7)
  n, m = 6, 14
  rows, cols = rng.integers(0, n, m), rng.integers(0, n, m)
  rows[1], cols[1] = rows[0], cols[0]                    # at least one repeat
  vals = rng.uniform(0.5, 2.0, m).astype(np.float32)
  order = np.lexsort((cols, rows))
  rows, cols, vals = rows[order], cols[order], vals[order]
  pad = 3                                                # padding slots: coordinate n
  fmt = js.Format(js.compressed(unique=False), js.singleton(unique=False))
  adj = js.SparseArray.from_buffers(
      jnp.asarray(np.concatenate([vals, np.ones(pad, np.float32)])),
      [jnp.array([0, m]), jnp.asarray(np.concatenate([rows, [n] * pad]), jnp.int32),
       jnp.asarray(np.concatenate([cols, [n] * pad]), jnp.int32)], shape=(n, n), format=fmt)
  pattern = np.zeros((n, n), bool)
  pattern[rows, cols] = True
  dense = np.zeros((n, n))
  np.add.at(dense, (rows, cols), vals)
  np.testing.assert_array_equal(graph.degree(adj), pattern.sum(1))
  np.testing.assert_array_equal(graph.degree(adj, axis=0), pattern.sum(0))
  np.testing.assert_allclose(graph.degree(adj, weighted=True), dense.sum(1), rtol=1e-6)
  np.testing.assert_array_equal(jax.jit(graph.degree)(adj), pattern.sum(1))


def gcn_norm_ref(a, add_self_loops=True):
  a = a.astype(np.float64).copy()
  if add_self_loops:
    d = np.diag(a).copy()
    a[np.diag_indices_from(a)] = np.where(d == 0, 1.0, d)
  deg = a.sum(1)
  dinv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0)
  return dinv[:, None] * a * dinv[None, :]


@pytest.mark.parametrize("fmt", ["csr", "coo"])
def test_gcn_norm_matches_numpy_float64(fmt):
  with jax.enable_x64(True):
    adj, a = _adjacency(3, fmt, np.float64)
    a[4] = 0                                         # an isolated row: degree 1 after loops
    adj = lu.from_dense(a, fmt, nse=util.stored_count(a) + 2)
    util.assert_allclose(lu.todense(graph.gcn_norm(adj)), gcn_norm_ref(a), dtype=np.float64)
    util.assert_allclose(lu.todense(graph.gcn_norm(adj, add_self_loops=False)),
                         gcn_norm_ref(a, False), dtype=np.float64)


def test_gradients_through_edge_weights():
  with jax.enable_x64(True):
    adj, _ = _adjacency(4, "csr", np.float64)
    x = jnp.asarray(util.random_values(0, (N, 2), np.float64))

    def f(w):
      return js.einsum("ij,jf->if", graph.gcn_norm(adj.with_data(w)), x)

    util.check_grads_both(jax.jit(f), (adj.data,), atol=1e-6, rtol=1e-6)


def test_to_undirected_matches_numpy():
  adj, a = _adjacency(5, "csr", positive=False)
  expected_sum = a + a.T
  np.testing.assert_allclose(lu.todense(graph.to_undirected(adj)), expected_sum, rtol=1e-6)
  both = (a != 0) & (a.T != 0)
  expected_max = np.where(both, np.maximum(a, a.T), a + a.T)
  und = graph.to_undirected(adj, reduce="max")
  assert und.nse == 2 * adj.nse
  np.testing.assert_allclose(lu.todense(und), expected_max, rtol=1e-6)
  with pytest.raises(ValueError, match="to_undirected: reduce must be 'sum' or 'max'"):
    graph.to_undirected(adj, reduce="mean")


def test_to_undirected_max_over_repeated_entries():
  """A non-unique format holds the sum of an edge's repeated entries; ``max`` compares
  those sums (each edge once in the result), and ``sum`` keeps the format."""
  rng = np.random.default_rng(7)
  coords = rng.integers(0, N, (30, 2))          # about 30 entries on 36 coordinates: repeats
  values = rng.normal(size=30).astype(np.float32)
  a = np.zeros((N, N))
  np.add.at(a, tuple(coords.T), values)
  stored = np.zeros((N, N), bool)
  stored[tuple(coords.T)] = True
  adj = js.from_coo(coords, values, (N, N), format=util.UNORDERED_COO, nse=33)
  expected = np.where(stored & stored.T, np.maximum(a, a.T), a + a.T)
  und = graph.to_undirected(adj, reduce="max")
  assert und.format.unique and und.nse == 66
  np.testing.assert_allclose(lu.todense(und), expected, rtol=1e-5, atol=1e-6)
  summed = graph.to_undirected(adj)
  assert summed.format == adj.format
  np.testing.assert_allclose(lu.todense(summed), a + a.T, rtol=1e-5, atol=1e-6)


def test_utilities_under_vmap_over_graphs():
  dense = np.stack([_adjacency(10 + s)[1] for s in range(3)])
  adjs = lu.from_dense(dense, "csr", n_batch=1, nse=util.stored_count(dense, 1) + 1)
  normed = jax.vmap(graph.gcn_norm)(adjs)
  got = jax.vmap(lambda A: A.todense())(normed)
  for k in range(3):
    np.testing.assert_allclose(got[k], gcn_norm_ref(dense[k]), rtol=1e-5, atol=1e-6)


def test_check_adjacency_errors():
  with pytest.raises(TypeError, match="GCNConv: the adjacency must be a jscorch SparseArray; "
                     r"got ndarray with shape \(2, 2\)"):
    graph.check_adjacency(np.eye(2), "GCNConv")
  with pytest.raises(js.SparseFormatError, match=r"gcn_norm: the adjacency must be square "
                     r".*adj.shape=\(2, 3\)"):
    graph.gcn_norm(lu.from_dense(np.ones((2, 3), np.float32)))
  blocked = js.SparseArray.from_buffers(jnp.ones((1, 2)), [jnp.array([0, 1]),
                                                             jnp.array([0])],
                                        shape=(1, 1, 2), format=js.CSR.replace(n_dense=1))
  with pytest.raises(js.SparseFormatError, match="add_self_loops: the adjacency must be a 2-D"):
    graph.add_self_loops(blocked)


# -- datasets -------------------------------------------------------------------------------------
def _write_small_npz(path, **overrides):
  """A 4-node graph in the shared schema, written with numpy only."""
  arrays = dict(
      num_nodes=np.int64(4),
      adj_indptr=np.array([0, 1, 3, 4, 4], np.int32), adj_indices=np.array([1, 0, 2, 1], np.int32),
      feat_indptr=np.array([0, 1, 2, 4, 5], np.int32),
      feat_indices=np.array([0, 2, 1, 2, 0], np.int32),
      feat_data=np.ones(5, np.float32), feat_shape=np.array([4, 3], np.int64),
      labels=np.array([0, 1, 1, 0], np.int32), train_index=np.array([0, 1], np.int32),
      val_index=np.array([2], np.int32), test_index=np.array([3], np.int32))
  arrays.update(overrides)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  np.savez(path, **arrays)


def test_load_npz_small_file(tmp_path):
  path = tmp_path / "small.npz"
  _write_small_npz(path)
  g = graph.load_npz(path)
  assert g.name == "small" and g.num_nodes == 4 and g.num_features == 3 and g.num_classes == 2
  np.testing.assert_array_equal(g.adj.to_scipy().toarray(),
                                [[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(g.features.to_scipy().toarray(),
                                [[1, 0, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0]])
  assert g.adj.format == js.CSR and g.features.format == js.CSR
  np.testing.assert_array_equal(g.labels, [0, 1, 1, 0])
  np.testing.assert_array_equal(g.train_index, [0, 1])
  assert "small" in repr(g) and "4 nodes, 4 stored edges" in repr(g)
  # save_npz -> load_npz round trip, with edge weights.
  weighted = graph.Graph(g.adj.with_data(jnp.array([1., 2., 2., 3.])), g.features, g.labels,
                         g.train_index, g.val_index, g.test_index, 2, "weighted")
  graph.save_npz(tmp_path / "again.npz", weighted)
  back = graph.load_npz(tmp_path / "again.npz")
  assert back.name == "weighted"
  np.testing.assert_array_equal(back.adj.to_scipy().toarray(),
                                weighted.adj.to_scipy().toarray())
  np.testing.assert_array_equal(back.features.to_scipy().toarray(),
                                g.features.to_scipy().toarray())


def test_load_npz_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    graph.load_npz(tmp_path / "absent.npz")
  _write_small_npz(tmp_path / "a.npz", labels=None)
  with pytest.raises(js.SparseFormatError, match=r"load_npz: .*a.npz lacks key\(s\) "
                     r"\['labels'\]"):
    graph.load_npz(tmp_path / "a.npz")
  _write_small_npz(tmp_path / "b.npz", adj_indices=np.array([1, 0, 7, 1], np.int32))
  with pytest.raises(js.SparseFormatError, match=r"load_npz: .*b.npz: the adjacency is not a "
                     r"valid CSR matrix of shape \(4, 4\)"):
    graph.load_npz(tmp_path / "b.npz")
  _write_small_npz(tmp_path / "c.npz", test_index=np.array([9], np.int32))
  with pytest.raises(js.SparseFormatError, match=r"test_index has node ids outside \[0, 4\)"):
    graph.load_npz(tmp_path / "c.npz")


@pytest.mark.skipif(not CORA.exists(), reason=f"shared data file {CORA} is absent "
                    "(it lives outside the project, in ../shared/data/)")
def test_load_cora():
  g = graph.load_npz(CORA)
  raw = np.load(CORA)
  assert (g.num_nodes, g.num_features, g.num_classes) == (2708, 1433, 7)
  assert g.num_edges == 10556
  assert (len(g.train_index), len(g.val_index), len(g.test_index)) == (140, 500, 1000)
  a = g.adj.to_scipy()
  ref = sp.csr_array((np.ones(len(raw["adj_indices"])), raw["adj_indices"], raw["adj_indptr"]),
                     shape=(2708, 2708))
  assert (a != ref).nnz == 0 and (a != a.T).nnz == 0 and a.diagonal().sum() == 0
  f = g.features.to_scipy()
  ref_f = sp.csr_array((raw["feat_data"], raw["feat_indices"], raw["feat_indptr"]),
                       shape=tuple(raw["feat_shape"]))
  assert (f != ref_f).nnz == 0 and set(np.unique(f.data)) == {1.0}
  np.testing.assert_array_equal(g.labels, raw["labels"])


def test_synthetic_sbm_properties():
  g = graph.synthetic_sbm(num_nodes=600, num_classes=4, num_features=200, avg_degree=8,
                          homophily=0.8, words_per_node=10, topic_fraction=0.4, seed=3)
  a = g.adj.to_scipy()
  labels = np.asarray(g.labels)
  assert (a != a.T).nnz == 0 and a.diagonal().sum() == 0 and set(np.unique(a.data)) == {1.0}
  rows, cols = a.nonzero()
  assert 6 < len(rows) / 600 < 10                               # average degree ~ 8
  assert 0.7 < np.mean(labels[rows] == labels[cols]) < 0.9     # homophily ~ 0.8
  f = g.features.to_scipy().toarray()
  assert set(np.unique(f)) <= {0.0, 1.0} and np.all(f.sum(1) >= 1)
  topic = 200 // 4
  own = np.mean([f[i, labels[i] * topic:(labels[i] + 1) * topic].sum() / f[i].sum()
                 for i in range(600)])
  assert own > 0.4                     # well above the 1/4 of class-independent words
  assert len(g.train_index) == 4 * 20 and len(g.val_index) == 150
  split = np.concatenate([g.train_index, g.val_index, g.test_index])
  assert len(np.unique(split)) == len(split)
  again = graph.synthetic_sbm(num_nodes=600, num_classes=4, num_features=200, avg_degree=8,
                              homophily=0.8, words_per_node=10, topic_fraction=0.4, seed=3)
  assert (again.adj.to_scipy() != a).nnz == 0
  np.testing.assert_array_equal(again.labels, labels)
  d = graph.default_graph()
  assert (d.num_nodes, d.num_classes, d.num_features) == (2000, 5, 500)

