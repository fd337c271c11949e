"""Time to the first result of a new generated kernel: cold (compiled now) and warm (cached).

Each measurement runs in a fresh Python process (so no in-memory cache helps) with
``$JSCORCH_CACHE_DIR`` pointing at a new directory: the first process compiles the
kernel's C source and stores the binary, the second loads it from disk. Reported:
the time spent getting the kernel (:func:`jscorch.primitives.kernel_build.build`:
generate-to-loaded library) and the whole first call of the jitted SpMM (also
tracing and XLA's compilation of the program around the kernel).

Example:
  >>> from jscorch.bench import build
  >>> t = build.first_call_times()          # doctest: +SKIP
  >>> sorted(t)                             # doctest: +SKIP
  ['cold_build_s', 'cold_s', 'hot_ms', 'warm_build_s', 'warm_s']
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

_CHILD = """
import json, time
import jax, jax.numpy as jnp, jscorch as js
from jscorch.primitives import kernel_build
spent = [0.0]
build = kernel_build.build
def timed_build(*args, **kwargs):
  t = time.perf_counter()
  try:
    return build(*args, **kwargs)
  finally:
    spent[0] += time.perf_counter() - t
kernel_build.build = timed_build
A = js.random(jax.random.key(0), (2048, 2048), density=0.01, format="csr")
x = jnp.ones((2048, 48), jnp.float32)
f = jax.jit(lambda A, x: A @ x)
jax.block_until_ready((A, x))
spent[0] = 0.0       # building A may use structure kernels: count only the SpMM's
t = time.perf_counter(); f(A, x).block_until_ready(); first = time.perf_counter() - t
t = time.perf_counter(); f(A, x).block_until_ready(); hot = time.perf_counter() - t
print(json.dumps(dict(first_s=first, hot_s=hot, build_s=spent[0])))
"""


def _child(cache_dir: str) -> dict:
  env = dict(os.environ, JSCORCH_CACHE_DIR=cache_dir, JSCORCH_LOWERING="kernel")
  proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                        text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def first_call_times() -> dict:
  """First calls in new processes: ``cold_s`` (new kernel) and ``warm_s`` (binary cached
  on disk), ``*_build_s`` the part spent getting the kernel, ``hot_ms`` a repeated call."""
  with tempfile.TemporaryDirectory(prefix="jscorch-bench-cache-") as cache_dir:
    cold = _child(cache_dir)
    warm = _child(cache_dir)
  return dict(cold_s=cold["first_s"], warm_s=warm["first_s"], cold_build_s=cold["build_s"],
              warm_build_s=warm["build_s"], hot_ms=1e3 * warm["hot_s"])


def report(out=print) -> dict:
  """Measures and prints :func:`first_call_times` against the targets (1 s, 0.1 s)."""
  t = first_call_times()
  out("\nFirst call of a new generated kernel (SpMM 2048x2048, 1% dense, width 48; "
      "fresh process each)")
  out(f"  {'':<22} {'kernel s':>9} {'first call s':>13}")
  out(f"  {'cold (C compile)':<22} {t['cold_build_s']:>9.3f} {t['cold_s']:>13.3f}   "
      "target: first call < 1 s")
  out(f"  {'warm (cached binary)':<22} {t['warm_build_s']:>9.3f} {t['warm_s']:>13.3f}   "
      "target: kernel < 0.1 s")
  out(f"  repeated call {t['hot_ms']:.2f} ms")
  return t
