"""Graph models end to end: 2-layer GCN inference and training epochs, GAT and GraphSAGE
training epochs, on Cora and on synthetic graphs, against the libraries users would pick.

Contenders (all with the same parameters, features and graph; every result is checked
against the float64 edge-list model of :mod:`jscorch.bench.gnn_jax`):

* ``jscorch`` — ``jscorch.nn.GCNConv`` (on ``nn.gcn_adjacency(adj)``, computed once, like
  PyG's ``cached=True``), ``GATConv`` (on ``nn.gat_adjacency(adj)``: self loops added
  once), ``SAGEConv`` on a CSR adjacency, under ``jax.jit``,
  with the features as a CSR SparseArray when they are mostly zeros (Cora's bag of words:
  the layers' documented input form) and dense otherwise;
* ``PyG adj_t`` / ``PyG edge_index`` — ``torch_geometric`` layers on a sparse CSR
  ``adj_t`` (PyG's fastest form) and on the edge index (its scatter path);
* ``torch.sparse`` — GCN and GraphSAGE written with ``torch.sparse.mm`` (sparse features
  too when jscorch gets them);
* ``segment_sum`` — the plain-JAX edge-list model (jraph's form), ``BCOO`` —
  ``jax.experimental.sparse`` products, ``dense`` — dense `[n, n]` matrices (where they
  fit in memory).

A training epoch is one full-batch step: forward, cross-entropy over the training nodes,
backward, and an SGD update of every parameter (no dropout, so results are exact);
results compared: the loss and every gradient. Inference compares the logits.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jscorch as js
from jscorch import nn
from jscorch.bench import gnn_jax, graphs
from jscorch.bench.timing import measure
from jscorch.bench.workloads import Contender, Workload, _torch

LR = 0.01
DENSE_LIMIT = 16_384          # the dense contender runs up to this many nodes (1 GiB / matrix)
ROWS = ("GCN", "GAT", "SAGE")


class _JsModel(nnx.Module):
  """The 2-layer model with jscorch's layers, parameters copied from ``p``."""

  def __init__(self, model: str, p: dict):
    rngs = nnx.Rngs(0)
    f, hidden, classes = p["W1"].shape[0], p["b1"].shape[0], p["b2"].shape[0]
    self.model = model
    if model == "gcn":
      self.conv1 = nn.GCNConv(f, hidden, rngs=rngs)
      self.conv2 = nn.GCNConv(hidden, classes, rngs=rngs)
    elif model == "sage":
      self.conv1 = nn.SAGEConv(f, hidden, rngs=rngs)
      self.conv2 = nn.SAGEConv(hidden, classes, rngs=rngs)
    else:
      heads = gnn_jax.GAT_HEADS
      self.conv1 = nn.GATConv(f, hidden // heads, num_heads=heads, rngs=rngs)
      self.conv2 = nn.GATConv(hidden, classes, num_heads=1, rngs=rngs)
    for name, var in self.params().items():
      var.set_value(jnp.asarray(p[name]))

  def params(self) -> dict:
    """Canonical name (:data:`gnn_jax.PARAMS`) → the layer's ``nnx.Param``."""
    fields = {"W": "kernel", "b": "bias", "R": "root_kernel", "as": "att_src", "ad": "att_dst"}
    out = {}
    for name in gnn_jax.PARAMS[self.model]:
      conv = self.conv1 if name.endswith("1") else self.conv2
      out[name] = getattr(conv, fields[name[:-1]])
    return out

  def __call__(self, adj, x):
    act = jax.nn.elu if self.model == "gat" else jax.nn.relu
    return self.conv2(adj, act(self.conv1(adj, x)))


def _jscorch_steps(model: str, p: dict, g):
  """``(infer, train_step)`` for jscorch's layers; the adjacency is built once here."""
  adj = js.from_scipy(g.adj)
  if model == "gcn":
    adj = nn.gcn_adjacency(adj)
  elif model == "gat":
    adj = nn.gat_adjacency(adj)
  graphdef, params, rest = nnx.split(_JsModel(model, p), nnx.Param, ...)
  x = js.from_scipy(g.sparse_x()) if g.sparse_features else jnp.asarray(g.x)
  labels, train = jnp.asarray(g.labels), jnp.asarray(g.train)

  @jax.jit
  def infer(params, adj, x):
    return nnx.merge(graphdef, params, rest)(adj, x)

  @jax.jit
  def step(params, adj, x, labels, train):
    def loss(params):
      return gnn_jax.cross_entropy(infer(params, adj, x), labels, train)
    value, grads = jax.value_and_grad(loss)(params)
    return value, grads, jax.tree.map(lambda q, d: q - LR * d, params, grads)

  def flat(result):
    value, grads, _ = result
    named = nnx.merge(graphdef, grads, rest).params()
    return (np.asarray(value),) + tuple(np.asarray(named[k].get_value())
                                        for k in gnn_jax.PARAMS[model])
  return (Contender("jscorch", lambda: infer(params, adj, x)),
          Contender("jscorch", lambda: step(params, adj, x, labels, train), flat))


def _jax_steps(name: str, model: str, p: dict, agg, g):
  """``(infer, train_step)`` contenders of the plain-JAX model over aggregation ``agg``."""
  params = {k: jnp.asarray(v) for k, v in p.items()}
  x, labels, train = jnp.asarray(g.x), jnp.asarray(g.labels), jnp.asarray(g.train)
  infer = jax.jit(functools.partial(gnn_jax.forward, model))

  @jax.jit
  def step(params, agg, x, labels, train):
    value, grads = gnn_jax.loss_and_grads(model, params, agg, x, labels, train)
    return value, grads, jax.tree.map(lambda q, d: q - LR * d, params, grads)

  def flat(result):
    value, grads, _ = result
    return (np.asarray(value),) + tuple(np.asarray(grads[k]) for k in gnn_jax.PARAMS[model])
  return (Contender(name, lambda: infer(params, agg, x)),
          Contender(name, lambda: step(params, agg, x, labels, train), flat))


def _torch_steps(model: str, p: dict, g, skipped: dict) -> list:
  """The PyG and torch.sparse ``(infer, train_step)`` pairs that can run here."""
  try:
    from jscorch.bench import gnn_torch
  except ImportError:
    skipped["torch"] = "not installed (pip install torch==2.13.0)"
    return []
  out = []
  if model == "gat":
    skipped["torch.sparse"] = "no softmax over the rows of a CSR matrix (PyG covers GAT)"
  else:
    out.append(("torch.sparse", gnn_torch.sparse_model(model, p, g)))
  try:
    import torch_geometric  # noqa: F401
  except ImportError:
    skipped["PyG"] = "not installed (pip install torch_geometric)"
    return _torch_pairs(out, g)
  for form in ("adj_t", "edge_index"):
    out.append((f"PyG {form}", gnn_torch.pyg_model(model, p, g, form)))
  return _torch_pairs(out, g)


def _torch_pairs(models, g):
  from jscorch.bench import gnn_torch
  pairs = []
  for name, (module, inputs, grads_of) in models:
    infer, train_step = gnn_torch.steps(module, inputs, grads_of, g, LR)
    pairs.append((Contender(name, infer), Contender(name, train_step,
                                                    lambda r: tuple(np.asarray(v) for v in r))))
  return pairs


def contenders(model: str, p: dict, g) -> tuple[list, dict]:
  """Every ``(infer, train_step)`` contender pair for ``model`` on ``g``, and the skipped
  contenders with their reasons."""
  skipped = {}
  pairs = [_jscorch_steps(model, p, g)]
  pairs.append(_jax_steps("segment_sum", model, p, gnn_jax.EdgeList.build(g), g))
  if model == "gat":
    skipped["BCOO"] = "jax.experimental.sparse has no sparse softmax (segment_sum is JAX's form)"
  else:
    pairs.append(_jax_steps("BCOO", model, p, gnn_jax.BcooAdjacency.build(g), g))
  if g.num_nodes <= DENSE_LIMIT:
    pairs.append(_jax_steps("dense", model, p, gnn_jax.DenseAdjacency.build(g), g))
  else:
    skipped["dense"] = (f"[n, n] = {g.num_nodes:,}^2 float32 is "
                        f"{4 * g.num_nodes ** 2 / 2 ** 30:,.0f} GiB")
  pairs += _torch_steps(model, p, g, skipped)
  return pairs, skipped


def _reference_too_large(model: str, g, hidden: int) -> str | None:
  """Why the float64 reference of ``model`` on ``g`` would not fit in half of this
  machine's memory, or None. Only GAT's is large: its edge-list model holds a few
  `[edges, heads, hidden]` float64 arrays (gathered features, their cotangents)."""
  if model != "gat":
    return None
  need = 6 * (g.adj.nnz + g.adj.shape[0]) * gnn_jax.GAT_HEADS * hidden * 8
  have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  if need <= have // 2:
    return None
  return (f"the float64 edge-list reference needs about {need / 2**30:.0f} GiB; this "
          f"machine has {have / 2**30:.0f} GiB (not run: results could not be checked)")


def model_workloads(model: str, g, train_only: bool, hidden: int, seed: int = 0) -> list:
  """The inference (unless ``train_only``) and training-epoch workloads of ``model``."""
  label = {"gcn": "GCN", "gat": "GAT", "sage": "GraphSAGE"}[model]
  data = g.describe() + f", hidden {hidden}" + (", CSR features for jscorch and torch.sparse"
                                                 if g.sparse_features else "")
  too_large = _reference_too_large(model, g, hidden)
  if too_large:
    return [Workload(f"{label} training epoch", data, (), [], {"every contender": too_large})]
  p = gnn_jax.init_params(model, g.x.shape[1], hidden, g.num_classes, seed)
  pairs, skipped = contenders(model, p, g)
  out = [Workload(f"{label} training epoch", data, gnn_jax.reference(model, p, g, True),
                  [train for _, train in pairs], dict(skipped))]
  if not train_only:
    floor = None if g.sparse_features or model != "gcn" else _projection_floor(g, p["W1"])
    out.insert(0, Workload(f"{label} inference", data, gnn_jax.reference(model, p, g, False),
                           [infer for infer, _ in pairs], dict(skipped), floor))
  return out


@jax.jit
def _dense_projection(x, w):
  return jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST)


def _projection_floor(g, w1):
  """The notes of a GCN inference on dense features: what its first layer's dense ``X W1``
  alone costs (XLA, and torch when installed), against the time a 4x lead over the fastest
  other contender leaves for the whole model. No contender can go below that product."""
  def notes(results, repeats):
    x, w = jnp.asarray(g.x), jnp.asarray(w1)
    costs = [f"XLA {measure(lambda: _dense_projection(x, w), repeats).median_ms:.2f} ms"]
    torch = _torch()
    if torch is not None:
      tx, tw = torch.from_numpy(g.x), torch.from_numpy(np.asarray(w1))
      with torch.no_grad():
        costs.append(f"torch {measure(lambda: (tx @ tw).numpy(), repeats).median_ms:.2f} ms")
    lines = [f"floor: the first layer's dense X·W1 ({g.x.shape[0]:,} x {g.x.shape[1]} by "
             f"{w1.shape[0]} x {w1.shape[1]}) alone takes {', '.join(costs)}"]
    others = [r for r in results if "median_ms" in r and not r.get("wrong")
              and r["impl"] != "jscorch"]
    if others:
      best = min(others, key=lambda r: r["median_ms"])
      lines.append(f"a 4x lead over the fastest other contender ({best['impl']}, "
                   f"{best['median_ms']:.2f} ms) leaves {best['median_ms'] / 4:.2f} ms "
                   "for the whole model")
    return lines
  return notes


# Synthetic graphs ("rmat", scale, edge samples) / ("sbm", nodes, mean degree), hidden width
# (Cora: Kipf's 16), GAT width per head (8 heads). Cora needs a file; the quick size falls
# back to jscorch's embedded synthetic graph without one.
FULL = dict(graphs=(("rmat", 17, 1_000_000), ("sbm", 131_072, 16), ("rmat", 20, 5_000_000),
                    ("sbm", 1_048_576, 10)), hidden=64, cora_hidden=16, gat_hidden=8)
QUICK = dict(graphs=(), hidden=32, cora_hidden=16, gat_hidden=8)


def _graph(spec):
  kind, a, b = spec
  if kind == "rmat":
    return graphs.rmat(a, b)
  return graphs.sbm(a, degree=b)


def _default_graph():
  """jscorch's embedded demo graph (an SBM of 2,000 nodes) in the bench's form."""
  g = js.graph.default_graph()
  return graphs.HostGraph("default(sbm2000)", g.adj.to_scipy().astype(np.float32),
                          np.asarray(g.features.todense(), np.float32),
                          np.asarray(g.labels, np.int32), np.asarray(g.train_index, np.int32),
                          g.num_classes)


def build_workloads(quick: bool, only: set | None, cora: str | None = None) -> list:
  """Zero-argument callables, each giving the workloads of one model on one graph: Cora
  (file ``cora``; without it, the quick size uses the embedded graph), then the synthetic
  graphs of the full size."""
  size = QUICK if quick else FULL
  wanted = set(ROWS) if only is None else set(only) & set(ROWS)
  makes = []
  small = (lambda: graphs.load_npz(cora)) if cora else (None if not quick else _default_graph)
  sources = ([(small, size["cora_hidden"])] if small else []) + \
      [(functools.partial(_graph, spec), size["hidden"]) for spec in size["graphs"]]
  for load, hidden in sources:
    get = functools.lru_cache(maxsize=1)(load)
    if "GCN" in wanted:
      makes.append(lambda get=get, h=hidden: model_workloads("gcn", get(), False, h))
    if "GAT" in wanted:
      makes.append(lambda get=get: model_workloads("gat", get(), True, size["gat_hidden"]))
    if "SAGE" in wanted:
      makes.append(lambda get=get, h=hidden: model_workloads("sage", get(), True, h))
  return makes
