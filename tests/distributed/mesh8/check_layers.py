"""``jscorch.nn`` graph layers on a sharded adjacency: values and gradients equal unsharded ones.

The model's code is the same for both adjacencies (each layer's one forward calls the
aggregation of the adjacency it is given); ``jsd.apply`` with an explicit ``exchange`` is
checked too. Also:
the example trains under one ``nnx.jit`` per step through the layers and matches
unsharded training, and everything works on an Explicit-axes mesh inside its context.
"""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jscorch as js
from jscorch import distributed as jsd
from jscorch import nn
from jscorch.distributed import layers

IN, HID, OUT = 6, 8, 3
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def _close(got, want, what):
  want = np.asarray(want, np.float64)
  scale = max(1.0, float(np.abs(want).max()))
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=3e-5, atol=3e-5 * scale,
                             err_msg=what)


class Net(nnx.Module):
  """conv1 -> relu -> conv2, with either kind of adjacency."""

  def __init__(self, kind):
    rngs = nnx.Rngs(0)
    if kind == "gcn":
      self.conv1, self.conv2 = nn.GCNConv(IN, HID, rngs=rngs), nn.GCNConv(HID, OUT, rngs=rngs)
    elif kind == "gat":
      self.conv1 = nn.GATConv(IN, HID // 2, num_heads=2, rngs=rngs)
      self.conv2 = nn.GATConv(HID, OUT, num_heads=2, concat=False, add_self_loops=False,
                              rngs=rngs)
    else:
      self.conv1 = nn.SAGEConv(IN, HID, normalize=True, rngs=rngs)
      self.conv2 = nn.GINConv(HID, OUT, hidden_features=4, train_eps=True, eps=0.3, rngs=rngs)

  def __call__(self, adj, x, exchange=None):
    if exchange is not None:            # another exchange than the layers' default
      h = jax.nn.relu(jsd.apply(self.conv1, adj, x, exchange=exchange))
      return jsd.apply(self.conv2, adj, h, exchange=exchange)
    return self.conv2(adj, jax.nn.relu(self.conv1(adj, x)))     # either kind of adjacency


def _record_routes(monkeypatch):
  """The layer names whose forward asked the sharded aggregation for its features."""
  routed = []
  features = layers.ShardedAggregation.features
  monkeypatch.setattr(layers.ShardedAggregation, "features",
                      lambda self, x, n, func: routed.append(func) or features(self, x, n, func))
  return routed


@pytest.fixture(scope="module")
def problem(matrices):
  """The symmetric R-MAT graph with every 37th row emptied: zero-degree rows on every shard."""
  m = matrices["graph"].tocsr(copy=True)
  empty = np.arange(0, m.shape[0], 37)
  m.data[np.isin(np.repeat(np.arange(m.shape[0]), np.diff(m.indptr)), empty)] = 0
  m.eliminate_zeros()
  assert np.all(np.diff(m.indptr)[empty] == 0)
  rng = np.random.default_rng(7)
  x = rng.standard_normal((m.shape[0], IN)).astype(np.float32)
  w = rng.standard_normal((m.shape[0], OUT)).astype(np.float32)
  return js.from_scipy(m), x, w


def _loss(graphdef, state, rest, adj, x, w, exchange=None):
  out = nnx.merge(graphdef, state, rest)(adj, x, exchange)
  return jnp.sum(out * w), out


def _grads(kind, adj, x, w, data, exchange=None):
  """Loss, output and gradients w.r.t. parameters, features and edge weights."""
  graphdef, state, rest = nnx.split(Net(kind), nnx.Param, ...)   # rest: GAT's rng state

  @jax.jit
  def run(state, x, data, w):
    f = lambda s, x, d: _loss(graphdef, s, rest, adj.with_data(d), x, w, exchange)
    return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(state, x, data)

  return run(state, x, data, w)


@pytest.fixture(scope="module")
def reference(problem):
  A, x, w = problem
  return {kind: _grads(kind, A, jnp.asarray(x), jnp.asarray(w), A.data)
          for kind in ("gcn", "sage_gin", "gat")}


@pytest.fixture
def use_lowering():
  saved = js.config.lowering
  yield lambda value: setattr(js.config, "lowering", value)
  js.config.lowering = saved


@pytest.mark.parametrize("kind,mesh_key,exchange,reorder,low", [
    ("gcn", "1d", None, None, "auto"),
    ("gcn", "2d", None, "degree", "portable"),
    ("sage_gin", "1d", None, "degree", "auto"),
    ("sage_gin", "1d", "replicated", None, "auto"),
    ("gat", "1d", None, None, "auto"),
    ("gat", "2d_wide", None, "degree", "portable"),
], ids=["gcn-1d-layers", "gcn-2d-degree-portable-layers", "sage_gin-1d-degree-layers",
        "sage_gin-1d-apply-replicated", "gat-1d-layers", "gat-2d-degree-portable-layers"])
def test_layers_match_unsharded(kind, mesh_key, exchange, reorder, low, problem, reference,
                                meshes, use_lowering, monkeypatch):
  """Loss, output and jax.grad w.r.t. parameters, features and edge weights, under jit."""
  A, x, w = problem
  use_lowering(low)
  routed = _record_routes(monkeypatch)
  mesh, axis = meshes[mesh_key]
  As = jsd.shard(A, mesh, axis=axis, reorder=reorder)
  (loss, out), (g_state, g_x, g_data) = _grads(kind, As, As.shard_rows(x), As.shard_rows(w),
                                               As.data, exchange)
  (ref_loss, ref_out), (r_state, r_x, r_data) = reference[kind]
  _close(loss, ref_loss, "loss")
  _close(As.unshard_rows(out), ref_out, "output")
  np.testing.assert_array_equal(np.asarray(out)[~np.asarray(As.row_mask())], 0)
  for (path, got), (_, want) in zip(jax.tree_util.tree_leaves_with_path(g_state),
                                    jax.tree_util.tree_leaves_with_path(r_state)):
    _close(got, want, f"grad {jax.tree_util.keystr(path)}")
  _close(As.unshard_rows(g_x), r_x, "grad x")
  _close(As.with_data(g_data).unshard().to_scipy().toarray(),
         A.with_data(r_data).to_scipy().toarray(),
         "grad edge weights")
  # the layers' one forward took the sharded aggregation (traced once, under jit)
  want = {"gcn": ["GCNConv", "GCNConv"], "sage_gin": ["SAGEConv", "GINConv"],
          "gat": ["GATConv", "GATConv"]}[kind]
  assert routed == want, routed


def test_example_trains_like_unsharded(monkeypatch):
  """examples/train_gcn_sharded.py: jitted Adam steps through the GCNConv layers, same
  losses/parameters as unsharded."""
  routed = _record_routes(monkeypatch)
  path = os.path.join(ROOT, "examples", "train_gcn_sharded.py")
  spec = importlib.util.spec_from_file_location("train_gcn_sharded", path)
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  lines = []
  result = example.main(devices=8, steps=3, nodes=200, hidden=8, check=True, out=lines.append)
  assert result["losses"][-1] < result["losses"][0], lines
  assert result["param_gap"] < 1e-4 and result["loss_gap"] < 1e-5, lines
  assert result["imbalance"] <= 1.1, lines
  assert routed and set(routed) == {"GCNConv"}, routed   # traced through the layers


def test_explicit_mesh_inside_its_context(matrices):
  """jax.make_mesh's default Explicit axes: works under jax.set_mesh, clear error outside."""
  m = matrices["uniform"]
  mesh = jax.make_mesh((4, 2), ("r", "c"))
  As = jsd.shard(js.from_scipy(m), mesh, axis="r")
  x = np.random.default_rng(2).standard_normal((m.shape[0], 4)).astype(np.float32)
  conv = nn.GATConv(4, 2, num_heads=2, rngs=nnx.Rngs(0))
  for call in (lambda: jsd.spmm(As, x), lambda: conv(As, x)):
    with pytest.raises(jsd.SparseShardingError, match="outside the mesh context.*jax.set_mesh"):
      call()
  with jax.set_mesh(mesh):
    xs = As.shard_cols(x)
    f = jax.jit(jax.value_and_grad(lambda x_: jnp.sum(jsd.spmm(As, x_, exchange="halo") ** 2)))
    value, grad = f(xs)
    y = np.asarray(As.unshard_rows(jsd.spmm(As, xs)))
    g = np.asarray(As.unshard_cols(grad))
    layer_out = np.asarray(As.unshard_rows(conv(As, xs)))
  _close(layer_out, conv(js.from_scipy(m), x), "explicit GATConv")
  a64 = m.astype(np.float64)
  _close(y, a64 @ x, "explicit spmm")
  _close(value, np.sum((a64 @ x) ** 2), "explicit loss")
  _close(g, 2 * a64.T @ (a64 @ x), "explicit grad")
