"""Node classification with sparse GNNs: the demo's models and training loop.

:class:`GCN` (Kipf & Welling) and :class:`GAT` (Veličković et al.) are two-layer
models of :mod:`jscorch.nn` layers. :func:`fit` trains one model on a
:class:`~jscorch.graph.Graph` with Adam and L2 weight decay, one jitted step per
epoch (so a progress bar can follow it); :func:`fit_seeds` trains several
independently initialised copies at once, ``jax.vmap`` over seeds of a
``jax.lax.scan`` over epochs, in one compiled call. Both record the loss and
the train/validation/test accuracy of every epoch and report the test accuracy
at the epoch of best validation accuracy (PyG's examples' model selection).

Example:
  >>> from jscorch import graph, train
  >>> g = graph.synthetic_sbm(num_nodes=200, num_features=50, num_classes=3, seed=0)
  >>> history = train.fit(train.make_gcn(g, seed=0), g, epochs=5)
  >>> len(history.loss), 0 <= history.test_acc_at_best_val <= 1
  (5, True)
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jscorch.array import SparseArray, is_sparse
from jscorch.einsum import einsum
from jscorch.graph import Graph
from jscorch.nn import GATConv, GCNConv, SparseDropout, gat_adjacency, gcn_adjacency

__all__ = ["GAT", "GCN", "History", "fit", "fit_seeds", "make_gat", "make_gcn",
           "normalize_rows"]


# -- models ---------------------------------------------------------------------------------------
def _keys(rngs, n):
  """``n`` dropout keys from a call-time key (or None: the layers' own streams)."""
  if rngs is None:
    return [None] * n
  if isinstance(rngs, nnx.Rngs):
    rngs = rngs.dropout()
  return list(jax.random.split(rngs, n))


class GCN(nnx.Module):
  """Two-layer GCN: ``dropout → GCNConv → ReLU → dropout → GCNConv`` (logits).

  Input dropout acts on the stored values of sparse features (Kipf's sparse
  dropout). Call as ``model(adj, x, deterministic=..., rngs=...)``.

  Example:
    >>> from flax import nnx
    >>> m = GCN(1433, 16, 7, rngs=nnx.Rngs(0))
    >>> m.conv1.kernel.shape, m.conv2.kernel.shape
    ((1433, 16), (16, 7))
  """

  def __init__(self, in_features: int, hidden: int, num_classes: int, *, dropout: float = 0.5,
               rngs: nnx.Rngs):
    self.conv1 = GCNConv(in_features, hidden, rngs=rngs)
    self.conv2 = GCNConv(hidden, num_classes, rngs=rngs)
    self.dropout = SparseDropout(dropout, rngs=rngs)

  def __call__(self, adj: SparseArray, x, *, deterministic: bool | None = None, rngs=None):
    k1, k2 = _keys(rngs, 2)
    if is_sparse(adj):          # both layers share one normalisation
      adj = gcn_adjacency(adj)
    h = jax.nn.relu(self.conv1(adj, self.dropout(x, deterministic=deterministic, rngs=k1)))
    return self.conv2(adj, self.dropout(h, deterministic=deterministic, rngs=k2))


class GAT(nnx.Module):
  """Two-layer GAT as in the paper's Cora setup.

  ``dropout → GATConv(heads × hidden, concat) → ELU → dropout → GATConv(1 head)``,
  with attention dropout ``dropout`` in both layers.

  Example:
    >>> from flax import nnx
    >>> m = GAT(1433, 8, 7, heads=8, rngs=nnx.Rngs(0))
    >>> m.conv1.kernel.shape, m.conv2.kernel.shape
    ((1433, 64), (64, 7))
  """

  def __init__(self, in_features: int, hidden: int, num_classes: int, *, heads: int = 8,
               dropout: float = 0.6, rngs: nnx.Rngs):
    self.conv1 = GATConv(in_features, hidden, num_heads=heads, dropout=dropout, rngs=rngs)
    self.conv2 = GATConv(hidden * heads, num_classes, num_heads=1, concat=False,
                         dropout=dropout, rngs=rngs)
    self.dropout = SparseDropout(dropout, rngs=rngs)

  def __call__(self, adj: SparseArray, x, *, deterministic: bool | None = None, rngs=None):
    k1, k2, k3, k4 = _keys(rngs, 4)
    if is_sparse(adj):          # both layers share one self-looped adjacency
      adj = gat_adjacency(adj)
    h = self.conv1(adj, self.dropout(x, deterministic=deterministic, rngs=k1),
                   deterministic=deterministic, rngs=k2)
    h = jax.nn.elu(h)
    return self.conv2(adj, self.dropout(h, deterministic=deterministic, rngs=k3),
                      deterministic=deterministic, rngs=k4)


def make_gcn(g: Graph, *, hidden: int = 16, dropout: float = 0.5, seed: int = 0) -> GCN:
  """A :class:`GCN` sized for ``g`` (Kipf's Cora setup by default)."""
  return GCN(g.num_features, hidden, g.num_classes, dropout=dropout, rngs=nnx.Rngs(seed))


def make_gat(g: Graph, *, hidden: int = 8, heads: int = 8, dropout: float = 0.6,
             seed: int = 0) -> GAT:
  """A :class:`GAT` sized for ``g`` (the GAT paper's Cora setup by default)."""
  return GAT(g.num_features, hidden, g.num_classes, heads=heads, dropout=dropout,
             rngs=nnx.Rngs(seed))


# -- data -----------------------------------------------------------------------------------------
@jax.jit
def normalize_rows(x):
  """Divides each row by its sum (rows summing to 0 are kept): Kipf's feature preprocessing.

  Works on a SparseArray (a sampled einsum: the pattern is kept) or a dense array.
  """
  total = einsum("ij->i", x) if is_sparse(x) else jnp.sum(x, axis=1)
  scale = jnp.where(total != 0, 1 / jnp.where(total != 0, total, 1), 1)
  return einsum("ij,i->ij", x, scale) if is_sparse(x) else x * scale[:, None]


class _Data(NamedTuple):
  adj: SparseArray
  x: object
  labels: jax.Array
  train: jax.Array
  val: jax.Array
  test: jax.Array


def _data(g: Graph, normalize_features: bool) -> _Data:
  x = normalize_rows(g.features) if normalize_features else g.features
  return _Data(g.adj, x, g.labels, g.train_index, g.val_index, g.test_index)


# -- one training step --------------------------------------------------------------------------
class _Config(NamedTuple):
  """Static training options (hashable)."""
  graphdef: object
  lr: float
  weight_decay: float


def _optimizer(cfg: _Config):
  return optax.adam(cfg.lr)


def _l2(params) -> jax.Array:
  return sum(jnp.sum(jnp.square(p)) for p in jax.tree_util.tree_leaves(params))


def _accuracy(logits, labels, index):
  return jnp.mean(jnp.argmax(logits[index], axis=-1) == labels[index])


def _step(cfg: _Config, state, data: _Data, key):
  """One epoch: a gradient step on the training nodes, then evaluation of all splits.

  ``state = (decayed, other, rest, opt_state)``; returns the new state and
  ``(loss, train_acc, val_acc, test_acc)``. The L2 term ``weight_decay / 2 *
  ||decayed||^2`` adds ``weight_decay * p`` to the gradient, as PyTorch's
  ``Adam(weight_decay=)`` and Kipf's code do.
  """
  decayed, other, rest, opt_state = state

  def loss_fn(params):
    model = nnx.merge(cfg.graphdef, *params, rest)
    logits = model(data.adj, data.x, deterministic=False, rngs=key)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[data.train],
                                                         data.labels[data.train]).mean()
    return ce + 0.5 * cfg.weight_decay * _l2(params[0])

  params = (decayed, other)
  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = _optimizer(cfg).update(grads, opt_state, params)
  decayed, other = optax.apply_updates(params, updates)
  model = nnx.merge(cfg.graphdef, decayed, other, rest)
  logits = model(data.adj, data.x, deterministic=True)
  metrics = jnp.stack([loss, _accuracy(logits, data.labels, data.train),
                       _accuracy(logits, data.labels, data.val),
                       _accuracy(logits, data.labels, data.test)])
  return (decayed, other, rest, opt_state), metrics


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _jit_step(cfg, state, data, key):
  return _step(cfg, state, data, key)


def _split(model, decay):
  graphdef, decayed, other, rest = nnx.split(model, nnx.All(nnx.Param, decay), nnx.Param, ...)
  return graphdef, decayed, other, rest


# -- results --------------------------------------------------------------------------------------
@dataclasses.dataclass
class History:
  """Per-epoch curves and the summary of a training run (numpy arrays, one entry per epoch).

  Attributes:
    loss: training loss (with dropout and the L2 term).
    train_acc, val_acc, test_acc: accuracies of the model after each epoch's update.
    seconds_per_epoch: wall time per epoch after compilation (``fit``), or of the
      whole run divided by the epochs (``fit_seeds``, compilation excluded).
    compile_seconds: time of the first (compiling) call.
  """
  loss: np.ndarray
  train_acc: np.ndarray
  val_acc: np.ndarray
  test_acc: np.ndarray
  seconds_per_epoch: float = float("nan")
  compile_seconds: float = float("nan")

  @property
  def best_epoch(self) -> int:
    """The (first) epoch of best validation accuracy, counted from 0."""
    return int(np.argmax(self.val_acc))

  @property
  def test_acc_at_best_val(self) -> float:
    return float(self.test_acc[self.best_epoch])

  @property
  def final(self) -> dict:
    """Accuracies after the last epoch."""
    return dict(train=float(self.train_acc[-1]), val=float(self.val_acc[-1]),
                test=float(self.test_acc[-1]))


def _history(metrics, seconds_per_epoch=float("nan"), compile_seconds=float("nan")):
  m = np.asarray(metrics)
  return History(m[:, 0], m[:, 1], m[:, 2], m[:, 3], seconds_per_epoch, compile_seconds)


# -- public loops ---------------------------------------------------------------------------------
def fit(model: nnx.Module, g: Graph, *, epochs: int = 200, lr: float = 0.01,
        weight_decay: float = 5e-4, decay=None, normalize_features: bool = True,
        seed: int = 0, callback: Callable[[int, dict], None] | None = None) -> History:
  """Trains ``model`` in place on ``g``'s training nodes; one jitted step per epoch.

  Args:
    model: an ``nnx.Module`` called as ``model(adj, x, deterministic=, rngs=key)``
      that returns logits `[num_nodes, num_classes]` (:class:`GCN`, :class:`GAT`).
    g: the dataset.
    epochs, lr: Adam's schedule.
    weight_decay: L2 coefficient (PyTorch ``Adam(weight_decay=)`` semantics).
    decay: an ``nnx`` filter of the parameters that get weight decay; default:
      the first layer (``conv1``) for :class:`GCN` (Kipf), all for other models.
    normalize_features: divide each feature row by its sum first (Kipf).
    seed: seed of the dropout keys.
    callback: called after every epoch with ``(epoch, metrics)`` where metrics has
      ``loss``, ``train_acc``, ``val_acc``, ``test_acc`` (Python floats).

  Returns:
    The :class:`History`; ``model`` holds the final parameters.
  """
  decay = _default_decay(model) if decay is None else decay
  graphdef, decayed, other, rest = _split(model, decay)
  cfg = _Config(graphdef, float(lr), float(weight_decay))
  state = (decayed, other, rest, _optimizer(cfg).init((decayed, other)))
  data = _data(g, normalize_features)
  keys = jax.random.split(jax.random.key(seed), epochs)
  rows, compile_s, start = [], float("nan"), None
  for epoch in range(epochs):
    t0 = time.perf_counter()
    state, metrics = _jit_step(cfg, state, data, keys[epoch])
    metrics = np.asarray(metrics)
    if epoch == 0:
      compile_s = time.perf_counter() - t0
      start = time.perf_counter()
    rows.append(metrics)
    if callback is not None:
      callback(epoch, dict(zip(("loss", "train_acc", "val_acc", "test_acc"),
                               map(float, metrics))))
  per_epoch = (time.perf_counter() - start) / (epochs - 1) if epochs > 1 else compile_s
  nnx.update(model, state[0], state[1], state[2])
  return _history(np.stack(rows), per_epoch, compile_s)


def _default_decay(model):
  return nnx.PathContains("conv1") if isinstance(model, GCN) else nnx.Param


def fit_seeds(make_model: Callable[[nnx.Rngs], nnx.Module], g: Graph, seeds, *,
              epochs: int = 200, lr: float = 0.01, weight_decay: float = 5e-4, decay=None,
              normalize_features: bool = True) -> list[History]:
  """Trains one model per seed, all at once: ``vmap`` over seeds of a ``scan`` over epochs.

  Args:
    make_model: builds a model from ``nnx.Rngs`` (traced under ``vmap``: it must
      only create parameters, e.g. ``lambda rngs: GCN(1433, 16, 7, rngs=rngs)``).
    g: the dataset.
    seeds: ints; seed ``s`` initialises the model and its dropout keys.
    epochs, lr, weight_decay, decay, normalize_features: as in :func:`fit`.

  Returns:
    One :class:`History` per seed.
  """
  seeds = [int(s) for s in seeds]
  probe = make_model(nnx.Rngs(0))
  decay = _default_decay(probe) if decay is None else decay
  graphdef = _split(probe, decay)[0]
  cfg = _Config(graphdef, float(lr), float(weight_decay))
  data = _data(g, normalize_features)
  t0 = time.perf_counter()
  compiled = _fit_seeds.lower(cfg, make_model, decay, epochs, jnp.asarray(seeds),
                              data).compile()
  t1 = time.perf_counter()
  metrics = np.asarray(jax.block_until_ready(compiled(jnp.asarray(seeds), data)))
  t2 = time.perf_counter()
  return [_history(m, (t2 - t1) / epochs, t1 - t0) for m in metrics]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _fit_seeds(cfg, make_model, decay, epochs, seeds, data):
  def one(seed):
    init_key, drop_key = jax.random.split(jax.random.key(seed))
    model = make_model(nnx.Rngs(params=init_key, dropout=init_key))
    _, decayed, other, rest = _split(model, decay)
    state = (decayed, other, rest, _optimizer(cfg).init((decayed, other)))
    keys = jax.random.split(drop_key, epochs)
    _, metrics = jax.lax.scan(lambda s, k: _step(cfg, s, data, k), state, keys)
    return metrics

  return jax.vmap(one)(seeds)
