"""Tests of ``GCNConv``, ``SAGEConv`` and ``GINConv`` against dense float64 references.

Also: every graph layer (``GATConv`` included) has one forward over
``jscorch.nn.aggregation``: a sharded adjacency (a one-device mesh here; 8 devices in
``tests/distributed/mesh8/check_layers.py``) gives the plain adjacency's values and
gradients, zero-degree rows and padding included.
"""
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
from jscorch import distributed as jsd
from jscorch import graph, nn
from jscorch.nn.aggregation import SparseAggregation, aggregation
from jscorch.primitives import plan as kernel_planner

N, F_IN, F_OUT = 7, 5, 3
F64 = np.float64


# -- dense references ------------------------------------------------------------------------
def _with_remaining_loops(a):
  a = a.copy()
  missing = np.diag(a) == 0
  a[np.diag_indices_from(a)] = np.where(missing, 1.0, np.diag(a))
  return a


def gcn_ref(a, x, p, *, add_self_loops=True, normalize=True):
  if add_self_loops:
    a = _with_remaining_loops(a)
  if normalize:
    deg = a.sum(1)
    dinv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0)
    a = dinv[:, None] * a * dinv[None, :]
  return a @ (x @ p[("kernel",)]) + p.get(("bias",), 0)


def sage_ref(a, x, p):
  count = (a != 0).sum(1)[:, None]
  agg = np.where(count > 0, (a @ x @ p[("kernel",)]) / np.maximum(count, 1), 0)
  return agg + x @ p[("root_kernel",)] + p[("bias",)]


def gin_ref(a, x, p, eps):
  h = (1 + eps) * x + a @ x
  h = np.maximum(h @ p[("linear1", "kernel")] + p[("linear1", "bias")], 0)
  return h @ p[("linear2", "kernel")] + p[("linear2", "bias")]


LAYERS = {
    "gcn": (lambda dt, **kw: nn.GCNConv(F_IN, F_OUT, param_dtype=dt, rngs=nnx.Rngs(1), **kw),
            lambda a, x, p, m: gcn_ref(a, x, p, add_self_loops=m.add_self_loops,
                                       normalize=m.normalize)),
    "sage": (lambda dt, **kw: nn.SAGEConv(F_IN, F_OUT, param_dtype=dt, rngs=nnx.Rngs(2), **kw),
             lambda a, x, p, m: sage_ref(a, x, p)),
    "gin": (lambda dt, **kw: nn.GINConv(F_IN, F_OUT, hidden_features=4, eps=0.3,
                                        param_dtype=dt, rngs=nnx.Rngs(3), **kw),
            lambda a, x, p, m: gin_ref(a, x, p, m.eps)),
}


def _bias_nonzero(model, rng):
  """Random biases so the reference checks them (they start at zero)."""
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if path[-1] == "bias":
      var.set_value(jnp.asarray(util.random_values(rng, var.shape, var.get_value().dtype)))


# -- values ------------------------------------------------------------------------------------
# Layers x adjacency formats x dense/sparse features, sampled to keep compiles few.
REFERENCE_CASES = [("gcn", "csr", False), ("gcn", "coo", True), ("gcn", "csc", False),
                   ("sage", "csr", True), ("sage", "coo", False),
                   ("gin", "csr", False), ("gin", "csc", True)]


@pytest.mark.parametrize("name,fmt,sparse_x", [
    pytest.param(*case, id=f"{case[0]}-{case[1]}-{'sparse' if case[2] else 'dense'}_x")
    for case in REFERENCE_CASES])
def test_matches_dense_reference_float64(name, fmt, sparse_x):
  make, ref = LAYERS[name]
  with jax.enable_x64(True):
    adj, a = lu.random_adjacency(0, N, format=fmt, dtype=F64)
    x, xd = lu.random_features(1, N, F_IN, sparse=sparse_x, dtype=F64)
    model = make(jnp.float64)
    _bias_nonzero(model, np.random.default_rng(5))
    out = model(adj, x)
    assert out.dtype == jnp.float64
    util.assert_allclose(out, ref(a, xd, lu.params_of(model), model), dtype=np.float64)


@pytest.mark.parametrize("add_loops,normalize", [(False, True), (True, False), (False, False)])
def test_gcn_options(add_loops, normalize):
  with jax.enable_x64(True):
    adj, a = lu.random_adjacency(2, N, dtype=F64)
    x, xd = lu.random_features(3, N, F_IN, dtype=F64)
    model = nn.GCNConv(F_IN, F_OUT, add_self_loops=add_loops, normalize=normalize,
                       use_bias=False, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    assert model.bias is None
    expected = gcn_ref(a, xd, lu.params_of(model), add_self_loops=add_loops,
                       normalize=normalize)
    util.assert_allclose(model(adj, x), expected, dtype=np.float64)


def test_gcn_isolated_node_and_float32():
  adj = graph.from_edge_index(jnp.array([[0, 1], [1, 0]]), num_nodes=3)
  model = nn.GCNConv(F_IN, F_OUT, add_self_loops=False, rngs=nnx.Rngs(0))
  out = model(adj, jnp.ones((3, F_IN)))
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out[2]), np.zeros(F_OUT))   # degree 0: no NaN


def test_sage_and_gin_options():
  with jax.enable_x64(True):
    adj, a = lu.random_adjacency(4, N, dtype=F64)
    x, xd = lu.random_features(5, N, F_IN, dtype=F64)
    sage = nn.SAGEConv(F_IN, F_OUT, root_weight=False, use_bias=False, normalize=True,
                       param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    p = lu.params_of(sage)
    count = (a != 0).sum(1)[:, None]
    expected = np.where(count > 0, a @ xd @ p[("kernel",)], 0) / np.maximum(count, 1)
    norm = np.linalg.norm(expected, axis=1, keepdims=True)
    expected = np.where(norm > 0, expected / np.where(norm > 0, norm, 1), 0)
    util.assert_allclose(sage(adj, x), expected, dtype=np.float64)
    gin = nn.GINConv(F_IN, F_OUT, train_eps=True, eps=0.5, param_dtype=jnp.float64,
                     rngs=nnx.Rngs(0))
    assert isinstance(gin.eps, nnx.Param)
    util.assert_allclose(gin(adj, x), gin_ref(a, xd, lu.params_of(gin), 0.5), dtype=np.float64)


@pytest.mark.parametrize("fmt", ["csr", "coo"])
@pytest.mark.parametrize("add_loops", [True, False])
def test_cached_gcn_adjacency(fmt, add_loops):
  """``nn.gcn_adjacency`` gives GCNConv's values (float64 reference, padding and weights
  present), for every layer of a model; other options and layers fall back to ``adj``;
  ``eval_shape``, ``jit`` and ``vmap`` over features apply; built inside a differentiated
  function, edge-weight gradients (order 2, both modes) match the uncached layer's."""
  with jax.enable_x64(True):
    adj, a = lu.random_adjacency(20, N, format=fmt, dtype=F64)
    x, xd = lu.random_features(21, N, F_IN, dtype=F64)
    cached = nn.gcn_adjacency(adj, add_self_loops=add_loops)
    assert isinstance(aggregation(cached), nn.GCNAdjacency)
    model = nn.GCNConv(F_IN, F_OUT, add_self_loops=add_loops, param_dtype=jnp.float64,
                       rngs=nnx.Rngs(0))
    _bias_nonzero(model, np.random.default_rng(22))
    want = gcn_ref(a, xd, lu.params_of(model), add_self_loops=add_loops)
    util.assert_allclose(model(cached, x), want, dtype=np.float64)
    util.assert_allclose(jax.jit(lambda c, x: model(c, x))(cached, x), want, dtype=np.float64)
    other = nn.GCNConv(F_IN, F_OUT, add_self_loops=not add_loops, param_dtype=jnp.float64,
                       rngs=nnx.Rngs(0))          # options it was not built for: adj itself
    util.assert_allclose(other(cached, x), other(adj, x), dtype=np.float64)
    sage = nn.SAGEConv(F_IN, F_OUT, param_dtype=jnp.float64, rngs=nnx.Rngs(2))
    util.assert_allclose(sage(cached, x), sage(adj, x), dtype=np.float64)
    many = jax.vmap(lambda x: model(cached, x))(jnp.stack([x, 2 * x]))
    util.assert_allclose(many[1], gcn_ref(a, 2 * xd, lu.params_of(model),
                                          add_self_loops=add_loops), dtype=np.float64)
    shape = jax.eval_shape(lambda c: model(c, x), cached)
    assert shape.shape == (N, F_OUT) and shape.dtype == jnp.float64

    def through_cache(w):
      return model(nn.gcn_adjacency(adj.with_data(w), add_self_loops=add_loops), x)

    util.check_grads_both(through_cache, (adj.data,), atol=1e-5, rtol=1e-5)
    g_cached = jax.grad(lambda w: jnp.sum(through_cache(w) ** 2))(adj.data)
    g_plain = jax.grad(lambda w: jnp.sum(model(adj.with_data(w), x) ** 2))(adj.data)
    util.assert_allclose(g_cached, g_plain, dtype=np.float64)


def test_cached_gcn_adjacency_backward_needs_no_transpose(monkeypatch):
  """With a CSR adjacency, no product of a GCN layer's gradient (w.r.t. the features and
  the weights) re-sorts the pattern in its kernel: ``A^T g`` runs over the cached
  column-major copy. The plain adjacency's gradient does need that re-sort where it pays
  (here made to pay at any size, so the check can fail)."""
  monkeypatch.setattr(kernel_planner, "transpose_pays", lambda kp: True)
  adj, _ = lu.random_adjacency(30, N)
  x, _ = lu.random_features(31, N, F_IN)
  model = nn.GCNConv(F_IN, F_OUT, rngs=nnx.Rngs(0))
  f, params = lu.pure(model, lambda m, g, x: m(g, x))

  def transposes(graph):
    grad = jax.grad(lambda p, x: jnp.sum(f(p, graph, x) ** 2), argnums=(0, 1))
    return lu.kernel_transposes(jax.make_jaxpr(grad)(params, x).jaxpr)

  cached = nn.gcn_adjacency(adj)
  assert cached.normalized_csc is not None
  assert transposes(cached) == 0
  assert transposes(adj) > 0


def test_cached_gcn_adjacency_errors():
  with pytest.raises(ValueError, match="gcn_adjacency"):
    nn.gcn_adjacency(js.from_dense(jnp.ones((3, 4))))


# -- gradients -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYERS))
def test_check_grads_params_features_and_edge_weights(name):
  make, _ = LAYERS[name]
  with jax.enable_x64(True):
    adj, _ = lu.random_adjacency(6, 5, dtype=F64)
    x, _ = lu.random_features(7, 5, F_IN, dtype=F64)
    model = make(jnp.float64)
    _bias_nonzero(model, np.random.default_rng(8))
    f, params = lu.pure(model, lambda m, x, w: m(adj.with_data(w), x))
    util.check_grads_both(jax.jit(f), (params, x, adj.data), atol=1e-5, rtol=1e-5)


def test_gradient_w_r_t_edge_weights_keeps_pattern():
  adj, _ = lu.random_adjacency(9, N)
  x, _ = lu.random_features(10, N, F_IN)
  model = nn.GCNConv(F_IN, F_OUT, rngs=nnx.Rngs(0))
  g = js.grad(lambda adj: jnp.sum(model(adj, x) ** 2))(adj)
  assert g.format == adj.format and g.nse == adj.nse
  assert all(np.array_equal(a, b) for a, b in zip(util.buffers(g), util.buffers(adj)))
  n_used = int(adj.nnz)
  assert np.all(np.asarray(g.data[n_used:]) == 0)        # padding gets no gradient
  assert np.any(np.asarray(g.data[:n_used]) != 0)


# -- transformations -------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(LAYERS))
def test_jit_nnx_and_jax(name):
  make, _ = LAYERS[name]
  adj, _ = lu.random_adjacency(11, N)
  x, _ = lu.random_features(12, N, F_IN, sparse=True)
  model = make(jnp.float32)
  eager = model(adj, x)
  via_nnx = nnx.jit(lambda m, adj, x: m(adj, x))(model, adj, x)
  f, params = lu.pure(model, lambda m, adj, x: m(adj, x))
  via_jax = jax.jit(f)(params, adj, x)
  util.assert_allclose(via_nnx, eager)
  util.assert_allclose(via_jax, eager)


@pytest.mark.parametrize("name", list(LAYERS))
def test_vmap_over_features(name):
  make, _ = LAYERS[name]
  model = make(jnp.float32)
  adj, _ = lu.random_adjacency(13, N)
  xs = jnp.stack([lu.random_features(s, N, F_IN)[0] for s in range(3)])
  f, params = lu.pure(model, lambda m, adj, x: m(adj, x))
  out = jax.jit(jax.vmap(f, in_axes=(None, None, 0)))(params, adj, xs)
  for k in range(3):
    util.assert_allclose(out[k], model(adj, xs[k]), err_msg=f"x batch {k}")


def test_vmap_over_graphs_with_their_own_patterns():
  model = nn.GCNConv(F_IN, F_OUT, rngs=nnx.Rngs(0))
  xs = jnp.stack([lu.random_features(s, N, F_IN)[0] for s in range(3)])
  dense = np.stack([lu.random_adjacency(20 + s, N)[1] for s in range(3)])
  adjs = lu.from_dense(dense, "csr", n_batch=1, nse=util.stored_count(dense, 1) + 1)
  assert adjs.n_batch == 1
  out = jax.vmap(model)(adjs, xs)
  for k in range(3):
    util.assert_allclose(out[k], model(util.element(adjs, k), xs[k]),
                         err_msg=f"graph batch {k}")


def test_optimizer_trains_gcn():
  adj, _ = lu.random_adjacency(14, N)
  x, _ = lu.random_features(15, N, F_IN, sparse=True)
  target = jnp.asarray(np.random.default_rng(0).normal(size=(N, F_OUT)), jnp.float32)
  model = nn.GCNConv(F_IN, F_OUT, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, adj, x):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(adj, x) - target) ** 2))(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(model, opt, adj, x)) for _ in range(30)]
  assert losses[-1] < 0.5 * losses[0], losses


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,cls", [("GCNConv", nn.GCNConv), ("SAGEConv", nn.SAGEConv),
                                      ("GINConv", nn.GINConv)])
def test_errors(name, cls):
  with pytest.raises(TypeError, match=f"{name}: rngs is required"):
    cls(F_IN, F_OUT)
  with pytest.raises(TypeError, match=f"{name}: rngs must be an nnx.Rngs"):
    cls(F_IN, F_OUT, rngs=0)
  with pytest.raises(ValueError, match=f"{name}: in_features must be a positive int"):
    cls(0, F_OUT, rngs=nnx.Rngs(0))
  layer = cls(F_IN, F_OUT, rngs=nnx.Rngs(0))
  adj, _ = lu.random_adjacency(0, N)
  x = jnp.ones((N, F_IN))
  with pytest.raises(ValueError, match=rf"{name}: node counts differ: adj.shape=\(7, 7\) has 7 "
                     r"nodes but x.shape=\(6, 5\) has 6 rows"):
    layer(adj, jnp.ones((N - 1, F_IN)))
  with pytest.raises(ValueError, match=rf"{name}: wrong feature width: x.shape=\(7, 4\) has 4 "
                     "features but the layer was built with in_features=5"):
    layer(adj, jnp.ones((N, F_IN - 1)))
  with pytest.raises(ValueError, match=rf"{name}: x must be 2-D"):
    layer(adj, jnp.ones((2, N, F_IN)))
  rect = js.from_dense(jnp.ones((N, N + 1)))
  with pytest.raises(js.SparseFormatError, match=rf"{name}: the adjacency must be square .*"
                     r"adj.shape=\(7, 8\)"):
    layer(rect, x)
  with pytest.raises(TypeError, match=rf"{name}: the adjacency must be a jscorch SparseArray"):
    layer(jnp.eye(N), x)


# -- one forward, two adjacencies ------------------------------------------------------------
ZERO_ROWS = [2, 5]


def _graph_with_zero_degree_rows(dtype=np.float32):
  """A padded CSR adjacency whose rows 2 and 5 are empty (node 5 is isolated)."""
  a = np.abs(util.random_dense(np.random.default_rng(30), (N, N), density=0.5, dtype=dtype))
  a[ZERO_ROWS, :] = 0
  a[:, 5] = 0
  a[0, 1] = a[1, 0] = np.asarray(0.75, dtype)     # every other row keeps an edge
  a[3, 4] = a[4, 3] = a[6, 0] = np.asarray(1.5, dtype)
  return lu.from_dense(a, "csr", nse=util.stored_count(a) + 3), a


ONE_FORWARD = {
    "GCNConv": lambda dt: nn.GCNConv(F_IN, F_OUT, param_dtype=dt, rngs=nnx.Rngs(1)),
    "SAGEConv": lambda dt: nn.SAGEConv(F_IN, F_OUT, normalize=True, param_dtype=dt,
                                       rngs=nnx.Rngs(2)),
    "GINConv": lambda dt: nn.GINConv(F_IN, F_OUT, hidden_features=4, train_eps=True, eps=0.3,
                                     param_dtype=dt, rngs=nnx.Rngs(3)),
    "GATConv": lambda dt: nn.GATConv(F_IN, 2, num_heads=2, param_dtype=dt, rngs=nnx.Rngs(4)),
}


@pytest.fixture(scope="module")
def mesh1():
  return jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))


@pytest.mark.parametrize("name", list(ONE_FORWARD))
def test_plain_and_sharded_adjacency_share_one_forward(name, mesh1):
  """Values and gradients (parameters, features, edge weights) under jit are equal."""
  adj, _ = _graph_with_zero_degree_rows()
  x, _ = lu.random_features(31, N, F_IN)
  A = jsd.shard(adj, mesh1, axis="x")
  assert type(aggregation(adj)) is SparseAggregation
  assert type(aggregation(A)) is jsd.layers.ShardedAggregation
  agg = aggregation(A)
  assert aggregation(agg) is agg                                 # already an aggregation
  model = ONE_FORWARD[name](jnp.float32)
  _bias_nonzero(model, np.random.default_rng(32))
  f, params = lu.pure(model, lambda m, adj, x: m(adj, x))
  target = jnp.asarray(util.random_values(np.random.default_rng(33), (N, model(adj, x).shape[1]),
                                          np.float32))

  @jax.jit
  def run(params, adj, x, w, t):
    loss = lambda p, x, w: (jnp.sum(f(p, adj.with_data(w), x) * t), f(p, adj.with_data(w), x))
    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, x, w)

  (v0, out0), (gp0, gx0, gw0) = run(params, adj, x, adj.data, target)
  (v1, out1), (gp1, gx1, gw1) = run(params, A, A.shard_rows(x), A.data, A.shard_rows(target))
  util.assert_allclose(A.unshard_rows(out1), out0, err_msg="output")
  util.assert_allclose(v1, v0, err_msg="loss")
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(gp1), jax.tree.leaves(gp0)):
    util.assert_allclose(got, want, err_msg=f"grad {jax.tree_util.keystr(path)}")
  util.assert_allclose(A.unshard_rows(gx1), gx0, err_msg="grad x")
  util.assert_allclose(A.with_data(gw1).unshard().todense(), adj.with_data(gw0).todense(),
                       err_msg="grad edge weights")
  assert np.all(np.asarray(gw0[int(adj.nnz):]) == 0)            # padding: no gradient


def test_sage_zero_degree_rows_aggregate_zero_on_both_adjacencies(mesh1):
  """PyG's mean over an empty neighbourhood is 0: such a node's output is ``x W_root + b``;
  normalised without root and bias it is a zero row with finite gradients (check_grads to
  second order through the one forward, plain and sharded)."""
  with jax.enable_x64(True):
    adj, a = _graph_with_zero_degree_rows(F64)
    x, xd = lu.random_features(34, N, F_IN, dtype=F64)
    A = jsd.shard(adj, mesh1, axis="x")
    sage = nn.SAGEConv(F_IN, F_OUT, param_dtype=jnp.float64, rngs=nnx.Rngs(5))
    _bias_nonzero(sage, np.random.default_rng(35))
    expected = sage_ref(a, xd, lu.params_of(sage))
    util.assert_allclose(sage(adj, x), expected, dtype=np.float64)
    util.assert_allclose(A.unshard_rows(sage(A, A.shard_rows(x))), expected, dtype=np.float64)
    bare = nn.SAGEConv(F_IN, F_OUT, normalize=True, root_weight=False, use_bias=False,
                       param_dtype=jnp.float64, rngs=nnx.Rngs(6))
    for adjacency, feats, back in ((adj, x, lambda y: y), (A, A.shard_rows(x), A.unshard_rows)):
      f = jax.jit(lambda x, w, adjacency=adjacency: bare(adjacency.with_data(w), x))
      out = np.asarray(back(f(feats, adjacency.data)))
      np.testing.assert_array_equal(out[ZERO_ROWS], 0)
      np.testing.assert_allclose(np.linalg.norm(np.delete(out, ZERO_ROWS, 0), axis=1), 1)
      util.check_grads_both(f, (feats, adjacency.data), atol=1e-5, rtol=1e-5)

