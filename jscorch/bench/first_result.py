"""Time to the first result of a 2-layer GCN in a new process.

A user who starts Python, loads a graph and runs a model waits for: the adjacency on the
device and its GCN normalisation (``setup``), then the model's parameters and the first
jitted forward (tracing, XLA's compilation, loading the generated kernels, running:
``first call``). Each measurement runs in a fresh process on the same R-MAT graph, in
three conditions: ``cold`` (empty kernel cache), ``warm kernels`` (the generated kernels
cached on disk by an earlier process) and ``warm kernels + XLA cache`` (also JAX's
persistent compilation cache, turned on with :func:`jscorch.enable_compilation_cache` and
filled by an earlier process). A condition is measured ``runs`` times, in turn with the
others; the run of median total time is reported (one process is one noisy sample).

Example:
  >>> from jscorch.bench import first_result
  >>> t = first_result.measure(12, 20_000)     # doctest: +SKIP
  >>> sorted(t["cold"])                        # doctest: +SKIP
  ['first_call_s', 'hot_ms', 'runs', 'setup_s', 'total_s']
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

_CHILD = """
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
import jscorch as js
from flax import nnx
from jscorch import nn
from jscorch.bench import graphs
scale, edges, xla_cache = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if xla_cache:
  js.enable_compilation_cache(xla_cache)
g = graphs.rmat(scale, edges, features=128)
t0 = time.perf_counter()
adj = nn.gcn_adjacency(js.from_scipy(g.adj))
x = jnp.asarray(g.x)
jax.block_until_ready((adj, x))
t1 = time.perf_counter()
class GCN(nnx.Module):
  def __init__(self, rngs):
    self.conv1, self.conv2 = nn.GCNConv(128, 64, rngs=rngs), nn.GCNConv(64, 16, rngs=rngs)
  def __call__(self, adj, x):
    return self.conv2(adj, jax.nn.relu(self.conv1(adj, x)))
model = GCN(nnx.Rngs(0))
forward = nnx.jit(lambda model, adj, x: model(adj, x))
forward(model, adj, x).block_until_ready()
t2 = time.perf_counter()
forward(model, adj, x).block_until_ready()
t3 = time.perf_counter()
print(json.dumps(dict(setup_s=t1 - t0, first_call_s=t2 - t1, total_s=t2 - t0,
                      hot_ms=1e3 * (t3 - t2))))
"""


def _child(scale: int, edges: int, kernels: str, xla: str = "") -> dict:
  proc = subprocess.run([sys.executable, "-c", _CHILD, str(scale), str(edges), xla],
                        env=dict(os.environ, JSCORCH_CACHE_DIR=kernels), capture_output=True,
                        text=True)
  if proc.returncode:
    raise RuntimeError(f"first-result child failed:\n{proc.stderr[-2000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(scale: int, edges: int, runs: int = 3) -> dict:
  """``{"cold" | "warm kernels" | "warm kernels + XLA cache": times}`` (see the module),
  each the run of median ``total_s`` among ``runs``, with ``runs`` (every run's total)."""
  samples = {"cold": [], "warm kernels": [], "warm kernels + XLA cache": []}
  with tempfile.TemporaryDirectory(prefix="jscorch-first-result-") as tmp:
    kernels, xla = os.path.join(tmp, "kernels"), os.path.join(tmp, "xla")
    for run in range(runs):
      samples["cold"].append(_child(scale, edges, os.path.join(tmp, f"cold{run}")))
      if run == 0:
        _child(scale, edges, kernels, xla)             # fills both caches
      samples["warm kernels"].append(_child(scale, edges, kernels))
      samples["warm kernels + XLA cache"].append(_child(scale, edges, kernels, xla))
  out = {}
  for name, rs in samples.items():
    rs = sorted(rs, key=lambda r: r["total_s"])
    out[name] = dict(rs[len(rs) // 2], runs=[r["total_s"] for r in rs])
  return out


def report(scale: int, edges: int, out=print, runs: int = 3) -> dict:
  """Measures and prints :func:`measure` (target: warm kernels, total < 0.5 s)."""
  t = measure(scale, edges, runs)
  out(f"\nFirst result of a 2-layer GCN (128-64-16) on rmat{1 << scale} "
      f"({edges:,} edge samples), fresh processes, the median of {runs} runs each")
  out(f"  {'':<26} {'setup s':>8} {'first call s':>13} {'total s':>8} {'then ms':>8}  "
      "totals of the runs")
  for name, r in t.items():
    out(f"  {name:<26} {r['setup_s']:>8.3f} {r['first_call_s']:>13.3f} {r['total_s']:>8.3f} "
        f"{r['hot_ms']:>8.2f}  {' '.join(f'{s:.3f}' for s in r['runs'])}")
  out("  target: total < 0.5 s with warm kernels (setup = adjacency on device + normalisation)")
  return t
