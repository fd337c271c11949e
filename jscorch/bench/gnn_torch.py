"""The torch contenders of the model benchmark: PyG's layers and plain ``torch.sparse``.

Both compute the models of :mod:`jscorch.bench.gnn_jax` with the same parameters:

* :func:`pyg_model` — ``torch_geometric.nn`` ``GCNConv(cached=True)`` / ``GATConv`` /
  ``SAGEConv`` (PyG's defaults: self loops, mean aggregation), fed either the edge index
  (PyG's scatter path) or a sparse ``adj_t`` (a ``torch.sparse_csr_tensor``, PyG's fastest
  input form: a sparse matrix product);
* :func:`sparse_model` — the same GCN and GraphSAGE written with ``torch.sparse.mm``
  over a CSR matrix (no GAT: torch.sparse has no softmax over a CSR row).

Each returns ``(module, inputs, grads_of)``: ``module(*inputs)`` gives the logits and
``grads_of()`` the gradients in :data:`gnn_jax.PARAMS` order, in jscorch's layout.
Import only when torch (and, for :func:`pyg_model`, torch_geometric) is installed.
"""
from __future__ import annotations

import numpy as np
import torch

from jscorch.bench import gnn_jax


def _csr(a) -> torch.Tensor:
  """A float32 ``torch.sparse_csr_tensor`` of a scipy CSR matrix."""
  return torch.sparse_csr_tensor(torch.from_numpy(a.indptr.astype(np.int64)),
                                 torch.from_numpy(a.indices.astype(np.int64)),
                                 torch.from_numpy(a.data.astype(np.float32)), size=a.shape)


def _assign(tensor: torch.Tensor, value: np.ndarray):
  with torch.no_grad():
    tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)).reshape(tensor.shape))


class _Pyg(torch.nn.Module):
  def __init__(self, model, p):
    super().__init__()
    from torch_geometric import nn as pyg
    self.model = model
    hidden, classes = p["b1"].shape[0], p["b2"].shape[0]
    features = p["W1"].shape[0]
    if model == "gcn":
      self.conv1 = pyg.GCNConv(features, hidden, cached=True)
      self.conv2 = pyg.GCNConv(hidden, classes, cached=True)
      self.names = {"W1": (self.conv1.lin.weight, True), "b1": (self.conv1.bias, False),
                    "W2": (self.conv2.lin.weight, True), "b2": (self.conv2.bias, False)}
    elif model == "sage":
      self.conv1 = pyg.SAGEConv(features, hidden)
      self.conv2 = pyg.SAGEConv(hidden, classes)
      self.names = {"W1": (self.conv1.lin_l.weight, True), "R1": (self.conv1.lin_r.weight, True),
                    "b1": (self.conv1.lin_l.bias, False), "W2": (self.conv2.lin_l.weight, True),
                    "R2": (self.conv2.lin_r.weight, True), "b2": (self.conv2.lin_l.bias, False)}
    else:
      heads = gnn_jax.GAT_HEADS
      self.conv1 = pyg.GATConv(features, hidden // heads, heads=heads)
      self.conv2 = pyg.GATConv(hidden, classes, heads=1)
      self.names = {}
      for k, conv in (("1", self.conv1), ("2", self.conv2)):
        self.names.update({"W" + k: (conv.lin.weight, True), "as" + k: (conv.att_src, False),
                           "ad" + k: (conv.att_dst, False), "b" + k: (conv.bias, False)})
    for name, (tensor, transposed) in self.names.items():
      _assign(tensor, p[name].T if transposed else p[name])
    self.shapes = {name: p[name].shape for name in self.names}

  def forward(self, x, adj):
    act = torch.nn.functional.elu if self.model == "gat" else torch.relu
    return self.conv2(act(self.conv1(x, adj)), adj)

  def grads(self):
    """The gradients in :data:`gnn_jax.PARAMS` order and jscorch's shapes."""
    return tuple((t.grad.numpy().T if transposed else t.grad.numpy()).reshape(self.shapes[k])
                 for k in gnn_jax.PARAMS[self.model] for t, transposed in [self.names[k]])


def pyg_model(model: str, p: dict, g, form: str):
  """PyG's model on ``form`` ``"adj_t"`` (sparse CSR) or ``"edge_index"``."""
  module = _Pyg(model, p)
  if form == "adj_t":
    adj = _csr(g.adj)        # row i lists the sources of i: PyG's adj_t
  else:
    adj = torch.from_numpy(np.stack([g.adj.indices, g.rows]).astype(np.int64))
  return module, (torch.from_numpy(g.x), adj), module.grads


class _SparseMM(torch.nn.Module):
  def __init__(self, model, p, g):
    super().__init__()
    import scipy.sparse as sp
    self.model = model
    self.params = torch.nn.ParameterDict(
        {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in p.items()})
    if model == "gcn":
      r, c, w = gnn_jax._gcn_weights(g)
      self.adj = _csr(sp.csr_matrix((w.astype(np.float32), (r, c)), shape=g.adj.shape))
    else:
      inv = (1 / np.maximum(np.diff(g.adj.indptr), 1)).astype(np.float32)
      self.adj = _csr((sp.diags(inv) @ g.adj).tocsr())

  def forward(self, x):
    p, adj = self.params, self.adj
    if self.model == "gcn":
      h = torch.relu(torch.sparse.mm(adj, torch.mm(x, p["W1"])) + p["b1"])
      return torch.sparse.mm(adj, h @ p["W2"]) + p["b2"]
    h = torch.relu(torch.sparse.mm(adj, torch.mm(x, p["W1"])) + torch.mm(x, p["R1"]) + p["b1"])
    return torch.sparse.mm(adj, h @ p["W2"]) + h @ p["R2"] + p["b2"]

  def grads(self):
    return tuple(self.params[k].grad.numpy() for k in gnn_jax.PARAMS[self.model])


def sparse_model(model: str, p: dict, g):
  """GCN / GraphSAGE with ``torch.sparse.mm`` on a CSR matrix (``Â`` or ``D^-1 A``); the
  features are a CSR tensor too when they are mostly zeros."""
  module = _SparseMM(model, p, g)
  x = _csr(g.sparse_x()) if g.sparse_features else torch.from_numpy(g.x)
  return module, (x,), module.grads


def steps(module, inputs, grads_of, g, lr: float):
  """``(infer, train_step)`` zero-argument callables: logits under ``no_grad``, and
  ``(loss, *grads)`` after one backward pass and an (out-of-place) SGD update."""
  labels, train = torch.from_numpy(g.labels.astype(np.int64)), torch.from_numpy(g.train)
  params = list(module.parameters())

  def infer():
    with torch.no_grad():
      return module(*inputs).numpy()

  def train_step():
    for q in params:
      q.grad = None
    logits = module(*inputs)
    loss = torch.nn.functional.cross_entropy(logits[train], labels[train])
    loss.backward()
    with torch.no_grad():      # the optimizer's update, out of place: every call sees p
      updated = [q - lr * q.grad for q in params]
    del updated
    return (loss.detach().numpy(),) + grads_of()
  return infer, train_step
