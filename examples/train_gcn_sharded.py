"""Train a two-layer GCN data-parallel over a graph's rows on several (simulated) devices.

The adjacency is sharded by rows over a mesh axis (balanced by nonzeros), node
features / labels / masks live in the matching *node layout*, and the model is the
plain two-layer ``jscorch.nn.GCNConv`` model, unchanged: given a sharded adjacency
each layer's one forward runs over the sharded aggregation
(:mod:`jscorch.nn.aggregation`) — row-local dense work on every device plus one
sharded SpMM whose neighbour rows travel by halo exchange (``ppermute``; 2-D meshes
all-gather along mesh columns). The whole training step (forward,
``nnx.value_and_grad``, Adam update) is one ``nnx.jit``.

Run (simulated CPU devices are set up when JAX is not initialised yet)::

  python examples/train_gcn_sharded.py --devices 8 --steps 100
  python examples/train_gcn_sharded.py --devices 8 --mesh 4x2       # 2-D partitioning
  python examples/train_gcn_sharded.py --devices 4 --reorder degree

With ``--check`` the same model is also trained unsharded on one device and the
losses and parameters are compared.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time


def _simulate_devices(n: int) -> None:
  """Asks XLA for ``n`` CPU devices; only effective before JAX initialises its backend."""
  flag = f"--xla_force_host_platform_device_count={n}"
  if "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(devices: int = 8, steps: int = 60, nodes: int = 2000, hidden: int = 32,
         mesh_shape: tuple[int, ...] | None = None, reorder: str | None = None,
         check: bool = False, seed: int = 0, out=print) -> dict:
  """Trains the model; returns losses, accuracy and (with ``check``) the sharded/unsharded gap."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  from jscorch import distributed as jsd
  from jscorch import graph, nn

  if jax.device_count() < devices:
    raise SystemExit(f"train_gcn_sharded: {devices} devices requested but JAX has "
                     f"{jax.device_count()}; set XLA_FLAGS=--xla_force_host_platform_device_"
                     f"count={devices} before JAX starts.")
  g = graph.synthetic_sbm(num_nodes=nodes, num_classes=5, num_features=200, seed=seed)
  x = g.features.to_scipy().toarray().astype(np.float32)     # host arrays: no compiles
  labels = np.asarray(g.labels, np.int32)
  train = np.zeros(nodes, np.float32)
  train[np.asarray(g.train_index)] = 1
  test = np.zeros(nodes, np.float32)
  test[np.asarray(g.test_index)] = 1

  class GCN(nnx.Module):
    def __init__(self, rngs):
      self.conv1 = nn.GCNConv(x.shape[1], hidden, rngs=rngs)
      self.conv2 = nn.GCNConv(hidden, g.num_classes, rngs=rngs)

    def __call__(self, adj, h):       # the same code for a sharded and a plain adjacency
      return self.conv2(adj, jax.nn.relu(self.conv1(adj, h)))

  def loss_fn(model, adj, h, y, mask):
    logits = model(adj, h)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(ce * mask) / jnp.sum(mask), logits

  @nnx.jit
  def train_step(model, optimizer, adj, h, y, mask):
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, adj, h, y, mask)
    optimizer.update(model, grads)
    return loss, logits

  def fit(adj, h, y, mask, test_mask):
    model = GCN(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    losses, started = [], time.perf_counter()
    for _ in range(steps):
      loss, logits = train_step(model, optimizer, adj, h, y, mask)
      losses.append(float(loss))
    seconds = time.perf_counter() - started
    logits, y, test_mask = (np.asarray(a) for a in (logits, y, test_mask))
    correct = (np.argmax(logits, -1) == y) * test_mask
    return model, losses, float(correct.sum() / test_mask.sum()), seconds

  shape = mesh_shape or (devices,)
  names = ("rows", "cols")[:len(shape)]
  mesh = jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=jax.devices()[:int(np.prod(shape))])
  adj = jsd.shard(g.adj, mesh, axis=names if len(shape) == 2 else names[0], reorder=reorder)
  out(f"{g!r}\n{adj!r}: nonzeros per shard {adj.nnz_per_shard().ravel().tolist()}, "
      f"imbalance {adj.imbalance:.3f}")
  node = adj.shard_rows
  model, losses, acc, seconds = fit(adj, node(x), node(labels), node(train), node(test))
  out(f"sharded over {dict(mesh.shape)}: loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
      f"test accuracy {acc:.3f}, {steps} steps in {seconds:.2f} s")
  result = dict(losses=losses, accuracy=acc, seconds=seconds, imbalance=adj.imbalance)
  if check:
    ref_model, ref_losses, ref_acc, _ = fit(g.adj, x, labels, train, test)
    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(nnx.state(model, nnx.Param)),
        jax.tree.leaves(nnx.state(ref_model, nnx.Param))))
    loss_gap = float(np.max(np.abs(np.asarray(losses) - np.asarray(ref_losses))))
    out(f"unsharded reference: loss {ref_losses[0]:.4f} -> {ref_losses[-1]:.4f}, test accuracy "
        f"{ref_acc:.3f}; largest parameter difference {gap:.2e}, loss difference "
        f"{loss_gap:.2e}")
    result.update(reference_losses=ref_losses, param_gap=gap, loss_gap=loss_gap)
  return result


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--nodes", type=int, default=2000)
  parser.add_argument("--mesh", default=None, help="e.g. 4x2 for 2-D partitioning")
  parser.add_argument("--reorder", default=None, choices=["degree"])
  parser.add_argument("--check", action="store_true", help="compare with unsharded training")
  args = parser.parse_args()
  mesh = tuple(int(s) for s in args.mesh.split("x")) if args.mesh else None
  _simulate_devices(args.devices if mesh is None else max(args.devices, math.prod(mesh)))
  main(args.devices, args.steps, args.nodes, mesh_shape=mesh, reorder=args.reorder,
       check=args.check)
