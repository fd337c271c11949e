"""Sharded SpMM / SDDMM / row sums and their gradients equal unsharded float64 references.

One jitted ``value_and_grad`` per case (compiles are the cost on two shared cores):
the loss is linear in each product, so the reference gradients are closed forms.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import jscorch as js
from jscorch import distributed as jsd
from jscorch.bench import data

F, K = 5, 3
RTOL = 2e-5

CASES = [
    # (matrix, mesh, exchange, reorder, lowering): every exchange, 1-D and 2-D, square and
    # rectangular, uniform and power-law, relabelled or not, both lowerings (2-D with the
    # portable lowering and a relabelled power-law graph: tests/distributed/mesh8/check_layers.py)
    ("uniform", "1d", "halo", None, "auto"),
    ("rect", "1d", "allgather", None, "portable"),
    ("rmat", "1d", "replicated", None, "auto"),
    ("rmat", "1d", "halo", "degree", "auto"),
    ("rect", "2d_wide", None, None, "auto"),
]


def _id(case):
  return "-".join(str(c) for c in case if c is not None)


@pytest.fixture
def use_lowering():
  saved = js.config.lowering

  def use(value):
    js.config.lowering = value

  yield use
  js.config.lowering = saved


def _dense(S) -> np.ndarray:
  """float64 dense copy of a CSR SparseArray, read on the host (no compile)."""
  return S.to_scipy().toarray().astype(np.float64)


def _close(got, want, err_msg=""):
  want = np.asarray(want, np.float64)
  scale = max(1.0, float(np.abs(want).max()))
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=RTOL, atol=RTOL * scale,
                             err_msg=err_msg)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_products_and_gradients(case, meshes, matrices, use_lowering):
  name, mesh_key, exchange, reorder, low = case
  use_lowering(low)
  mesh, axis = meshes[mesh_key]
  m = matrices[name]
  A = js.from_scipy(m)
  As = jsd.shard(A, mesh, axis=axis, reorder=reorder)
  rng = np.random.default_rng(0)
  n_rows, n_cols = m.shape
  x, wy = rng.standard_normal((n_cols, F)), rng.standard_normal((n_rows, F))
  u, v = rng.standard_normal((n_rows, K)), rng.standard_normal((n_cols, K))
  wr = rng.standard_normal(n_rows)
  ws = rng.standard_normal(m.nnz)
  f32 = lambda a: np.asarray(a, np.float32)
  Ws = jsd.shard(A.with_data(jnp.asarray(f32(ws))), mesh, axis=axis, reorder=reorder)
  x_in = f32(x) if exchange == "replicated" else As.shard_cols(f32(x))

  def loss(d, x_, u_, v_):
    a = As.with_data(d)
    y = jsd.spmm(a, x_, exchange=exchange)
    s = jsd.sddmm(a, u_, v_, exchange=exchange)
    r = jsd.row_sum(a)
    total = jnp.sum(y * As.shard_rows(f32(wy))) + jnp.sum(s.data * Ws.data) + \
        jnp.sum(r * As.shard_rows(f32(wr)))
    return total, (y, s, r)

  (_, (y, s, r)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3),
                                                     has_aux=True))(
      As.data, x_in, As.shard_rows(f32(u)), As.shard_cols(f32(v)))
  assert y.sharding.spec[0] == As.node_spec[0]

  a64 = m.astype(np.float64)
  dense = a64.toarray()
  pattern = dense != 0
  ws_dense = _dense(js.from_scipy(m).with_data(f32(ws)))
  _close(As.unshard_rows(y), a64 @ x, "spmm")
  _close(_dense(s.unshard()), dense * (u @ v.T), "sddmm")
  _close(As.unshard_rows(r), dense.sum(1), "row_sum")
  g_data, g_x, g_u, g_v = grads
  want_a = pattern * (wy @ x.T + ws_dense * (u @ v.T) + wr[:, None])
  _close(_dense(As.with_data(g_data).unshard()), want_a, "grad A")
  g_x = g_x if exchange == "replicated" else As.unshard_cols(g_x)
  _close(g_x, a64.T @ wy, "grad x")
  _close(As.unshard_rows(g_u), (ws_dense * dense) @ v, "grad u")
  _close(As.unshard_cols(g_v), (ws_dense * dense).T @ u, "grad v")
  # the pattern survives a round trip exactly
  B = As.unshard()
  assert B.format == js.CSR and B.nse == m.nnz
  np.testing.assert_array_equal(_dense(B), m.toarray())


def test_local_csr_buffers(meshes):
  """Exact per-shard buffers: balanced by nonzeros, local CSR over global columns, padded."""
  from jax.sharding import AxisType
  mesh = jax.make_mesh((2,), ("x",), axis_types=(AxisType.Auto,), devices=jax.devices()[:2])
  x = np.zeros((5, 5), np.float32)
  x[0, [0, 1, 3]] = [1, 2, 3]          # a heavy first row: 3 of the 6 entries
  x[2, 2], x[3, 0], x[4, 3] = 4, 5, 6
  As = jsd.shard(sp.csr_array(x), mesh, axis="x")
  assert As.layout.rows.bounds == (0, 1, 5) and As.layout.rows.size == 4
  np.testing.assert_array_equal(np.asarray(As.nnz_per_shard()), [3, 3])
  np.testing.assert_array_equal(np.asarray(As.pos), [[0, 3, 3, 3, 3], [0, 0, 1, 2, 3]])
  np.testing.assert_array_equal(np.asarray(As.crd), [[0, 1, 3], [2, 0, 3]])
  np.testing.assert_array_equal(np.asarray(As.data), [[1, 2, 3], [4, 5, 6]])
  assert As.imbalance == 1.0
  # uneven: shard 1 gets padding entries (coordinate = n_cols, value 0)
  x[4, 3] = 0
  Bs = jsd.shard(sp.csr_array(x), mesh, axis="x")
  np.testing.assert_array_equal(np.asarray(Bs.crd), [[0, 1, 3], [2, 0, 5]])
  np.testing.assert_array_equal(np.asarray(Bs.data), [[1, 2, 3], [4, 5, 0]])
  np.testing.assert_array_equal(np.asarray(Bs.row_mask()), [1, 0, 0, 0, 1, 1, 1, 1])
  # halo plan (x rows partitioned like A's rows): shard 0 needs x rows 1 and 3 (local rows 0
  # and 2 of shard 1), shard 1 needs x row 0 (shard 0) besides its own row 2; one ring shift
  send, halo_crd, perm = (np.asarray(h) for h in Bs.halo)
  assert Bs.layout.halo == ((1, 2),)
  np.testing.assert_array_equal(send, [[0, 4], [0, 2]])       # 4 = padding (sends zeros)
  # column space [own 4 rows | 2 received]; padding entry -> 6
  np.testing.assert_array_equal(halo_crd, [[0, 4, 5], [1, 4, 6]])
  np.testing.assert_array_equal(perm, [[0, 1, 2], [0, 1, 2]])


@pytest.mark.parametrize("reorder", [None, "degree"])
def test_rmat_imbalance(meshes, reorder):
  """Max/mean nonzeros per shard <= 1.1 on a power-law (R-MAT) graph over 8 devices."""
  mesh, axis = meshes["1d"]
  m = data.rmat(12, 40_000, seed=1)
  As = jsd.shard(js.from_scipy(m.scipy()), mesh, axis=axis, reorder=reorder, halo=False)
  assert As.imbalance <= 1.1, As.nnz_per_shard()
  if reorder == "degree":
    assert As.layout.rows.size == 4096 // 8 + 1    # rows balanced too (+1 spare row)
  else:
    assert As.layout.rows.size > 4096 // 8          # contiguous: few heavy rows, many light


def test_layout_conversions_under_jit(meshes, matrices):
  """Traced shard_rows / unshard_rows / unshard agree with the host paths."""
  mesh, axis = meshes["2d"]
  m = matrices["graph"]
  A = js.from_scipy(m)
  x = np.random.default_rng(1).standard_normal((m.shape[0], 2)).astype(np.float32)
  for reorder in (None, "degree"):
    As = jsd.shard(A, mesh, axis=axis, reorder=reorder, halo=False)

    @jax.jit
    def roundtrip(a, x):
      node = a.shard_rows(x)
      return node, a.unshard_rows(node * 2), a.unshard()

    node, back, B = roundtrip(As, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(node), np.asarray(As.shard_rows(x)))
    np.testing.assert_array_equal(np.asarray(back), 2 * x)
    np.testing.assert_array_equal(_dense(B), m.toarray())


def _gcn_reference(dense, h, w, add_self_loops, normalize):
  """float64 ``sum(w * P h)`` for GCN propagation ``P``, and its gradients w.r.t. the
  stored values and ``h`` (dense JAX in 64-bit mode; independent of jscorch)."""
  pattern = dense != 0
  missing = (~pattern.diagonal()).astype(np.float64) if add_self_loops else np.zeros(len(h))

  def loss(a, h):
    prop = a + jnp.diag(jnp.asarray(missing))
    if normalize:                 # isolated nodes (degree 0) get 0, as in GCNConv
      deg = prop.sum(1)
      dinv = jnp.where(deg > 0, 1 / jnp.sqrt(jnp.where(deg > 0, deg, 1)), 0)
      prop = dinv[:, None] * prop * dinv[None, :]
    return jnp.sum(w * (prop @ h))

  with jax.enable_x64(True):
    value, (g_a, g_h) = jax.value_and_grad(loss, argnums=(0, 1))(jnp.asarray(dense),
                                                                  jnp.asarray(h))
    return float(value), np.asarray(g_a) * pattern, np.asarray(g_h)


@pytest.mark.parametrize("matrix,mesh_key,exchange,add_self_loops,normalize", [
    ("graph", "1d", "replicated", True, True),
    ("graph", "1d", "halo", False, True),
    ("uniform", "2d", None, True, False),
], ids=["graph-1d-replicated", "graph-1d-halo-no-loops", "uniform-2d-unnormalized"])
def test_gcn_aggregate_and_gradients(matrix, mesh_key, exchange, add_self_loops, normalize,
                                     meshes, matrices):
  """``gcn_aggregate`` and its gradients (edge weights, features) vs float64 dense JAX."""
  mesh, axis = meshes[mesh_key]
  m = matrices[matrix]
  As = jsd.shard(js.from_scipy(m), mesh, axis=axis)
  rng = np.random.default_rng(3)
  h, w = rng.standard_normal((m.shape[0], F)), rng.standard_normal((m.shape[0], F))
  f32 = lambda a: np.asarray(a, np.float32)

  def loss(d, h_):
    out = jsd.gcn_aggregate(As.with_data(d), h_, exchange=exchange,
                            add_self_loops=add_self_loops, normalize=normalize)
    return jnp.sum(out * As.shard_rows(f32(w))), out

  (value, out), (g_data, g_h) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      As.data, As.shard_rows(f32(h)))
  dense = m.toarray().astype(np.float64)
  ref_value, ref_ga, ref_gh = _gcn_reference(dense, h, w, add_self_loops, normalize)
  _close(value, ref_value, "loss")
  _close(As.unshard_rows(g_h), ref_gh, "grad h")
  _close(_dense(As.with_data(g_data).unshard()), ref_ga, "grad edge weights")
  np.testing.assert_array_equal(np.asarray(out)[~np.asarray(As.row_mask())], 0)


def test_size_one_axes_half_precision_repeats_and_zero_columns():
  """Valid inputs at the edges: a node-layout array respelled by JAX on a 1×8 mesh
  (``P(("r", "c"))`` → ``P("c")`` after an elementwise op), float16 / bfloat16 values
  (scipy has no half types), repeated coordinates (one edge, sharded or not), and a
  matrix with no columns."""
  from flax import nnx

  from jscorch import nn
  from jax.sharding import AxisType
  rng = np.random.default_rng(11)
  M = sp.random(12, 12, density=0.3, format="csr", random_state=rng, dtype=np.float32)
  h = rng.standard_normal((12, 3)).astype(np.float32)
  ref = M.toarray().astype(np.float64) @ (2 * h.astype(np.float64))
  for shape in [(1, 8), (8, 1)]:
    mesh = jax.make_mesh(shape, ("r", "c"), axis_types=(AxisType.Auto,) * 2)
    A = jsd.shard(js.from_scipy(M), mesh, axis=("r", "c"))
    _close(A.unshard_rows(jsd.spmm(A, 2 * A.shard_rows(h))), ref, err_msg=str(shape))

  mesh = jax.make_mesh((2,), ("x",), axis_types=(AxisType.Auto,))
  for dtype in (jnp.float16, jnp.bfloat16):
    A = js.from_scipy(M).astype(dtype)
    S = jsd.shard(A, mesh, axis="x")
    assert S.dtype == dtype
    np.testing.assert_allclose(np.asarray(S.unshard().todense(), np.float32),
                               np.asarray(A.todense(), np.float32))

  nu_coo = js.Format(js.compressed(unique=False), js.singleton(unique=False))
  A = js.SparseArray.from_buffers(        # (0, 1) stored twice, (1, 0) once
      jnp.array([1., 2., 4.]), [jnp.array([0, 3]), jnp.array([0, 0, 1]), jnp.array([1, 1, 0])],
      shape=(2, 2), format=nu_coo)
  x = jnp.array([[1.], [10.]])
  conv = nn.SAGEConv(1, 1, root_weight=False, use_bias=False, rngs=nnx.Rngs(0))
  conv.kernel[...] = jnp.ones((1, 1))
  S = jsd.shard(A, mesh, axis="x")
  np.testing.assert_allclose(conv(A, x), [[30.], [4.]])    # mean over one neighbour each
  np.testing.assert_allclose(S.unshard_rows(conv(S, S.shard_rows(x))), [[30.], [4.]])

  S = jsd.shard(js.from_scipy(sp.csr_matrix((5, 0), dtype=np.float32)), jax.make_mesh(
      (8,), ("x",), axis_types=(AxisType.Auto,)), axis="x")
  for exchange in (None, "allgather", "halo"):
    y = S.unshard_rows(jsd.spmm(S, np.zeros((0, 2), np.float32), exchange=exchange))
    np.testing.assert_array_equal(y, np.zeros((5, 2)))


@pytest.mark.parametrize("mesh_key", ["1d", "2d", "2d_wide"])
def test_rmatmul_and_its_gradient(meshes, matrices, mesh_key):
  """``x @ A`` for a matrix (rows and vectors, eager and under jit) against float64 scipy,
  and its gradient w.r.t. ``x`` (the forward product's transpose twice over)."""
  m = matrices["rect"]
  A = jsd.shard(js.from_scipy(m), *meshes[mesh_key])
  d = m.toarray().astype(np.float64)
  x = np.random.default_rng(12).standard_normal((5, m.shape[0])).astype(np.float32)
  _close(x @ A, x.astype(np.float64) @ d)
  _close(x[1] @ A, x[1].astype(np.float64) @ d)
  _close(jax.jit(lambda x, A: x @ A)(x, A), x.astype(np.float64) @ d)
  g = jax.grad(lambda x: jnp.sum((x @ A) ** 2))(jnp.asarray(x))
  _close(g, 2 * (x.astype(np.float64) @ d) @ d.T)
