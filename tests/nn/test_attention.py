"""Tests of ``GATConv``, ``SparseAttention`` and the mask helpers against dense references."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import layer_util as lu
import numpy as np
import optax
import pytest
import util
from flax import nnx

import jscorch as js
from jscorch import nn
from jscorch.nn import attention
from jscorch.nn.aggregation import aggregation

N, F_IN, F_HEAD, HEADS = 7, 5, 3, 2
F64 = np.float64


# -- dense references ------------------------------------------------------------------------
def gat_ref(a, x, p, *, heads, concat=True, add_self_loops=True, slope=0.2):
  mask = a != 0
  if add_self_loops:
    mask = mask | np.eye(len(a), dtype=bool)
  z = (x @ p[("kernel",)]).reshape(len(x), heads, -1)
  a_src = np.einsum("nhf,hf->nh", z, p[("att_src",)])
  a_dst = np.einsum("nhf,hf->nh", z, p[("att_dst",)])
  e = lu.leaky_relu(a_dst[:, None, :] + a_src[None, :, :], slope)
  alpha = lu.masked_softmax(e, mask[:, :, None], axis=1)
  out = np.einsum("ijh,jhf->ihf", alpha, z)
  out = out.reshape(len(x), -1) if concat else out.mean(1)
  return out + p.get(("bias",), 0), alpha


def attention_ref(x, mask, p, heads):
  def lin(name, x):
    return x @ p[(name, "kernel")] + p[(name, "bias")]
  length = x.shape[0]
  q, k, v = (lin(n, x).reshape(length, heads, -1) for n in ("query", "key", "value"))
  scores = np.einsum("ihd,jhd->ijh", q, k) / np.sqrt(q.shape[-1])
  w = lu.masked_softmax(scores, (mask != 0)[:, :, None], axis=1)
  o = np.einsum("ijh,jhd->ihd", w, v).reshape(length, -1)
  return lin("out", o), w


def _randomize_biases(model, seed=5):
  rng = np.random.default_rng(seed)
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if path[-1] == "bias":
      var.set_value(jnp.asarray(util.random_values(rng, var.shape, var.get_value().dtype)))


# -- GATConv ---------------------------------------------------------------------------------
GAT_CASES = [  # (format, concat, add_self_loops, sparse_x)
    ("csr", True, True, False), ("coo", False, True, True), ("csc", True, False, False)]


@pytest.mark.parametrize("fmt,concat,loops,sparse_x", [
    pytest.param(*c, id=f"{c[0]}-{'concat' if c[1] else 'mean'}-"
                 f"{'loops' if c[2] else 'noloops'}-{'sparse' if c[3] else 'dense'}_x")
    for c in GAT_CASES])
def test_gat_matches_dense_reference_float64(fmt, concat, loops, sparse_x):
  with jax.enable_x64(True):
    adj, a = lu.random_adjacency(0, N, format=fmt, dtype=F64)
    x, xd = lu.random_features(1, N, F_IN, sparse=sparse_x, dtype=F64)
    gat = nn.GATConv(F_IN, F_HEAD, num_heads=HEADS, concat=concat, add_self_loops=loops,
                     param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    _randomize_biases(gat)
    expected, alpha_ref = gat_ref(a, xd, lu.params_of(gat), heads=HEADS, concat=concat,
                                  add_self_loops=loops)
    util.assert_allclose(gat(adj, x), expected, dtype=np.float64)
    _, alpha = gat.attention(adj, x)
    assert alpha.shape == (N, N, HEADS) and alpha.n_dense == 1
    util.assert_allclose(lu.todense(alpha), alpha_ref, dtype=np.float64)


def test_gat_and_attention_score_each_coordinate_once():
  """A non-unique adjacency or mask with repeated coordinates (and a stored self loop)
  attends like the same tensor in CSR: one score per coordinate, not one per repeat (the
  sampled score einsum sums repeats: a coordinate stored k times once scored k times)."""
  with jax.enable_x64(True):
    idx = np.array([[0, 0], [0, 1], [1, 0], [0, 1], [2, 1], [3, 4], [2, 1], [5, 6], [6, 6]])
    repeated = js.from_coo(idx, np.ones(len(idx)), (N, N), format=util.UNORDERED_COO, nse=11)
    single = js.from_coo(np.unique(idx, axis=0), np.ones(len(np.unique(idx, axis=0))), (N, N),
                         format="csr")
    x = jnp.asarray(util.random_values(2, (N, F_IN), F64))
    gat = nn.GATConv(F_IN, F_HEAD, num_heads=HEADS, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    expected, _ = gat_ref(np.asarray(single.todense()), np.asarray(x), lu.params_of(gat),
                          heads=HEADS)
    util.assert_allclose(gat(repeated, x), expected, dtype=np.float64)
    attn = nn.SparseAttention(1, F_IN, param_dtype=jnp.float64, rngs=nnx.Rngs(1))
    util.assert_allclose(attn(x, repeated), attn(x, single), dtype=np.float64)


@pytest.mark.parametrize("fmt", ["csr", "coo"])
def test_cached_gat_adjacency(fmt):
  """``nn.gat_adjacency`` adds the self loops once: the same values and attention weights
  as the float64 reference, under jit too, and the same parameter gradients as the
  uncached layer; without self loops the layer attends over ``adj`` itself."""
  with jax.enable_x64(True):
    adj, a = lu.random_adjacency(8, N, format=fmt, dtype=F64)
    x, xd = lu.random_features(9, N, F_IN, dtype=F64)
    cached = nn.gat_adjacency(adj)
    assert isinstance(aggregation(cached), nn.GATAdjacency)
    gat = nn.GATConv(F_IN, F_HEAD, num_heads=HEADS, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    _randomize_biases(gat)
    expected, alpha_ref = gat_ref(a, xd, lu.params_of(gat), heads=HEADS)
    util.assert_allclose(jax.jit(lambda c, x: gat(c, x))(cached, x), expected, dtype=F64)
    _, alpha = gat.attention(cached, x)
    util.assert_allclose(lu.todense(alpha), alpha_ref, dtype=F64)
    no_loops = nn.GATConv(F_IN, F_HEAD, num_heads=HEADS, add_self_loops=False,
                          param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    util.assert_allclose(no_loops(cached, x), no_loops(adj, x), dtype=F64)
    f, params = lu.pure(gat, lambda m, g, x: m(g, x))
    grad = jax.grad(lambda p, g: jnp.sum(f(p, g, x) ** 2))
    for want, got in zip(jax.tree.leaves(grad(params, adj)), jax.tree.leaves(grad(params, cached))):
      util.assert_allclose(got, want, dtype=F64)
  with pytest.raises(ValueError, match="gat_adjacency"):
    nn.gat_adjacency(js.from_dense(jnp.ones((3, 4))))


def test_gat_check_grads():
  with jax.enable_x64(True):
    # The adjacency carries its self loops already (the insertion is tested above), which
    # keeps the compiled derivatives small.
    _, a = lu.random_adjacency(2, 5, dtype=F64)
    a[np.diag_indices_from(a)] = 1.0
    adj = lu.from_dense(a, "csr", nse=util.stored_count(a) + 2)
    x, _ = lu.random_features(3, 5, F_IN, dtype=F64)
    gat = nn.GATConv(F_IN, F_HEAD, num_heads=HEADS, add_self_loops=False,
                     param_dtype=jnp.float64, rngs=nnx.Rngs(1))
    _randomize_biases(gat)
    f, params = lu.pure(gat, lambda m, x: m(adj, x))
    util.check_grads_both(jax.jit(f), (params, x), atol=1e-5, rtol=1e-5)


def test_gat_dropout_train_and_eval():
  adj, _ = lu.random_adjacency(4, N)
  x, _ = lu.random_features(5, N, F_IN)
  gat = nn.GATConv(F_IN, F_HEAD, num_heads=HEADS, dropout=0.5, rngs=nnx.Rngs(0))
  ref = nn.GATConv(F_IN, F_HEAD, num_heads=HEADS, rngs=nnx.Rngs(0))    # same params
  gat.eval()
  util.assert_allclose(gat(adj, x), ref(adj, x))
  gat.train()
  key = jax.random.key(7)
  a, b = gat(adj, x, rngs=key), gat(adj, x, rngs=key)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(gat(adj, x, rngs=jax.random.key(8))))
  c, d = gat(adj, x), gat(adj, x)          # the layer's own stream advances
  assert not np.allclose(np.asarray(c), np.asarray(d))
  util.assert_allclose(gat(adj, x, deterministic=True), ref(adj, x))


def test_gat_jit_vmap_and_optimizer():
  adj, _ = lu.random_adjacency(6, N)
  xs = jnp.stack([lu.random_features(s, N, F_IN)[0] for s in range(3)])
  gat = nn.GATConv(F_IN, F_HEAD, num_heads=HEADS, rngs=nnx.Rngs(0))
  eager = gat(adj, xs[0])
  util.assert_allclose(nnx.jit(lambda m, adj, x: m(adj, x))(gat, adj, xs[0]), eager)
  out = jax.vmap(gat, in_axes=(None, 0))(adj, xs)
  for k in range(3):
    util.assert_allclose(out[k], gat(adj, xs[k]), err_msg=f"batch {k}")
  opt = nnx.Optimizer(gat, optax.adam(0.05), wrt=nnx.Param)
  target = jnp.asarray(np.random.default_rng(0).normal(size=(N, HEADS * F_HEAD)), jnp.float32)

  @nnx.jit
  def step(model, opt):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(adj, xs[0]) - target) ** 2))(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(gat, opt)) for _ in range(25)]
  assert losses[-1] < 0.7 * losses[0], losses


def test_gat_errors():
  with pytest.raises(TypeError, match="GATConv: rngs is required"):
    nn.GATConv(F_IN, F_HEAD)
  with pytest.raises(ValueError, match="GATConv: num_heads must be a positive int"):
    nn.GATConv(F_IN, F_HEAD, num_heads=0, rngs=nnx.Rngs(0))
  gat = nn.GATConv(F_IN, F_HEAD, rngs=nnx.Rngs(0))
  adj, _ = lu.random_adjacency(0, N)
  with pytest.raises(ValueError, match=r"GATConv: node counts differ: adj.shape=\(7, 7\)"):
    gat(adj, jnp.ones((N + 1, F_IN)))
  with pytest.raises(ValueError, match=r"GATConv: wrong feature width: x.shape=\(7, 2\)"):
    gat(adj, jnp.ones((N, 2)))
  with pytest.raises(js.SparseFormatError, match=r"GATConv: the adjacency must be square"):
    gat(lu.from_dense(np.ones((N, N + 2), np.float32)), jnp.ones((N, F_IN)))


# -- softmax over stored entries ---------------------------------------------------------------
def test_row_softmax_over_stored_entries_per_head():
  with jax.enable_x64(True):
    adj, a = lu.random_adjacency(8, N, dtype=F64, positive=False)
    a[3] = 0                                   # an empty row stays empty
    scores = lu.from_dense(a, "csr", nse=util.stored_count(a) + 2)
    values = util.random_values(0, (scores.nse, HEADS), F64)
    blocked = attention._pattern(scores, HEADS, jnp.float64).with_data(jnp.asarray(values))
    dense = np.asarray(lu.todense(blocked))
    out = attention._row_softmax(blocked)
    expected = lu.masked_softmax(dense, (a != 0)[:, :, None], axis=1)
    util.assert_allclose(lu.todense(out), expected, dtype=np.float64)
    assert np.all(np.asarray(out.data[-2:]) == 0)                # padding stays 0


# -- SparseAttention -----------------------------------------------------------------------------
L, F = 12, 8
MASKS = {
    "local": lambda: nn.local_window_mask(L, 2),
    "strided_causal": lambda: nn.strided_mask(L, 3, causal=True),
    "bigbird": lambda: nn.bigbird_mask(L, window=1, num_global=1, num_random=2, seed=3),
}


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_sparse_attention_matches_dense_reference_float64(mask_name):
  with jax.enable_x64(True):
    mask = MASKS[mask_name]().astype(jnp.float64)
    attn = nn.SparseAttention(2, F, out_features=5, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    _randomize_biases(attn)
    x = util.random_values(1, (L, F), F64)
    expected, w_ref = attention_ref(x, mask.to_scipy().toarray(), lu.params_of(attn), 2)
    util.assert_allclose(attn(jnp.asarray(x), mask), expected, dtype=np.float64)
    w = attn.attention_weights(jnp.asarray(x), mask)
    util.assert_allclose(lu.todense(w), w_ref, dtype=np.float64)


def test_sparse_attention_batch_grads_and_dropout():
  mask = nn.local_window_mask(L, 1)
  attn = nn.SparseAttention(2, F, dropout_rate=0.3, rngs=nnx.Rngs(0))
  xs = jnp.asarray(util.random_values(2, (2, 3, L, F), np.float32))
  attn.eval()
  out = attn(xs, mask)
  assert out.shape == (2, 3, L, F)
  util.assert_allclose(out[1, 2], attn(xs[1, 2], mask))
  util.assert_allclose(nnx.jit(lambda m, x, mask: m(x, mask))(attn, xs, mask), out)
  util.assert_allclose(jax.vmap(attn, in_axes=(0, None))(xs[0], mask), out[0])
  attn.train()
  key = jax.random.key(0)
  np.testing.assert_array_equal(np.asarray(attn(xs, mask, rngs=key)),
                                np.asarray(attn(xs, mask, rngs=key)))
  assert not np.allclose(np.asarray(attn(xs, mask, rngs=key)), np.asarray(out))
  with jax.enable_x64(True):
    attn64 = nn.SparseAttention(2, 4, param_dtype=jnp.float64, rngs=nnx.Rngs(1))
    mask64 = nn.local_window_mask(5, 1, dtype=jnp.float64)
    f, params = lu.pure(attn64, lambda m, x: m(x, mask64))
    util.check_grads_both(jax.jit(f), (params, jnp.asarray(util.random_values(3, (5, 4), F64))),
                          atol=1e-5, rtol=1e-5)


def test_sparse_attention_errors():
  with pytest.raises(TypeError, match="SparseAttention: rngs is required"):
    nn.SparseAttention(2, F)
  with pytest.raises(ValueError, match="SparseAttention: num_heads must divide qkv_features"):
    nn.SparseAttention(3, F, rngs=nnx.Rngs(0))
  attn = nn.SparseAttention(2, F, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"SparseAttention: wrong feature width: x.shape=\(12, 3\)"):
    attn(jnp.ones((L, 3)), nn.local_window_mask(L, 1))
  with pytest.raises(ValueError, match=r"SparseAttention: the mask is for length 10"):
    attn(jnp.ones((L, F)), nn.local_window_mask(10, 1))
  with pytest.raises(TypeError, match="SparseAttention: the adjacency must be a jscorch"):
    attn(jnp.ones((L, F)), jnp.ones((L, L)))


# -- mask helpers --------------------------------------------------------------------------------
def test_mask_helpers_match_their_definitions():
  i, j = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
  cases = [
      (nn.local_window_mask(L, 2), np.abs(i - j) <= 2),
      (nn.local_window_mask(L, 2, causal=True), (np.abs(i - j) <= 2) & (j <= i)),
      (nn.strided_mask(L, 4), (np.abs(i - j) < 4) | ((i - j) % 4 == 0)),
      (nn.strided_mask(L, 4, causal=True), ((np.abs(i - j) < 4) | ((i - j) % 4 == 0)) & (j <= i)),
  ]
  for mask, expected in cases:
    assert mask.format == js.CSR and mask.nse == int(expected.sum())
    np.testing.assert_array_equal(mask.to_scipy().toarray(), expected.astype(np.float32))
  bb = nn.bigbird_mask(L, window=1, num_global=2, num_random=3, seed=0).to_scipy().toarray()
  assert np.all(bb[:2] == 1) and np.all(bb[:, :2] == 1)
  assert np.all(bb[np.abs(i - j) <= 1] == 1)
  assert np.all(bb.sum(1) >= 3)
  again = nn.bigbird_mask(L, window=1, num_global=2, num_random=3, seed=0).to_scipy().toarray()
  np.testing.assert_array_equal(bb, again)
  with pytest.raises(ValueError, match="local_window_mask: seq_len must be a positive int"):
    nn.local_window_mask(0, 1)
  with pytest.raises(ValueError, match="strided_mask: stride must be a positive int"):
    nn.strided_mask(8, 0)



# -- block masks (BSR) ---------------------------------------------------------------------------
def _block_expected(grid_keep, b):
  return np.kron(grid_keep, np.ones((b, b))).astype(np.float32)


def test_block_mask_helpers_match_their_definitions():
  """With ``block=3`` each helper applies its rule to block coordinates (BSR ``(3, 3)``,
  every element of a stored block set); bad blocks and causal block masks raise."""
  nb, b = L // 3, 3
  gi, gj = np.meshgrid(np.arange(nb), np.arange(nb), indexing="ij")
  cases = [(nn.local_window_mask(L, 1, block=b), np.abs(gi - gj) <= 1),
           (nn.strided_mask(L, 2, block=b), (np.abs(gi - gj) < 2) | ((gi - gj) % 2 == 0))]
  for mask, keep in cases:
    assert mask.format == js.BSR((b, b)) and mask.nse == int(keep.sum())
    np.testing.assert_array_equal(np.asarray(mask.todense()), _block_expected(keep, b))
  bb = np.asarray(nn.bigbird_mask(L, window=0, num_global=1, num_random=1, block=b).todense())
  assert np.all(bb[:b] == 1) and np.all(bb[:, :b] == 1) and np.all(np.diag(bb) == 1)
  with pytest.raises(ValueError, match=r"local_window_mask: block must be a positive int "
                                       r"dividing seq_len; got block=5, seq_len=12\. Pad the "
                                       r"sequence to 15"):
    nn.local_window_mask(L, 1, block=5)
  with pytest.raises(ValueError, match=r"strided_mask: causal=True with block=3"):
    nn.strided_mask(L, 2, causal=True, block=3)


def test_sparse_attention_with_a_block_mask():
  """A BSR mask: outputs and weights against the dense float64 reference (every element
  of the stored blocks attends), gradients (order 2, fwd and rev), batches and dropout."""
  with jax.enable_x64(True):
    mask = nn.bigbird_mask(L, window=0, num_global=1, num_random=1, seed=2, block=3,
                           dtype=jnp.float64)
    attn = nn.SparseAttention(2, F, out_features=5, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    _randomize_biases(attn)
    x = util.random_values(1, (L, F), F64)
    expected, w_ref = attention_ref(x, np.asarray(mask.todense()), lu.params_of(attn), 2)
    util.assert_allclose(attn(jnp.asarray(x), mask), expected, dtype=np.float64)
    w = attn.attention_weights(jnp.asarray(x), mask)
    assert w.format == js.BSR((3, 3)).replace(n_batch=1) and w.shape == (2, L, L)
    util.assert_allclose(np.moveaxis(np.asarray(w.todense()), 0, -1), w_ref, dtype=np.float64)
    f, params = lu.pure(attn, lambda m, x: m(x, mask))
    util.check_grads_both(jax.jit(f), (params, jnp.asarray(x[:, :])), atol=1e-5, rtol=1e-5)
  mask = nn.local_window_mask(L, 1, block=4)
  attn = nn.SparseAttention(2, F, dropout_rate=0.3, rngs=nnx.Rngs(0))
  xs = jnp.asarray(util.random_values(2, (3, L, F), np.float32))
  attn.eval()
  out = attn(xs, mask)
  util.assert_allclose(out[2], attn(xs[2], mask))
  attn.train()
  assert not np.allclose(np.asarray(attn(xs, mask, rngs=jax.random.key(0))), np.asarray(out))


@pytest.mark.parametrize("concat", [True, False])
def test_gat_on_an_empty_graph(concat):
  gat = nn.GATConv(F_IN, F_HEAD, num_heads=HEADS, concat=concat, rngs=nnx.Rngs(0))
  out = gat(js.from_dense(jnp.zeros((0, 0)), format="csr"), jnp.ones((0, F_IN)))
  assert out.shape == (0, F_HEAD * HEADS if concat else F_HEAD)
