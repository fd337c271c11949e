"""``js.retain_host_memory``: a call's large intermediates reuse the previous call's pages
instead of faulting fresh ones in (run in child processes: the setting is process-wide)."""
import json
import os
import subprocess
import sys

import pytest

import jscorch as js

_CHILD = """
import json, resource, sys, warnings
import jax, jax.numpy as jnp, numpy as np
import jscorch as js
n, width = 1 << 18, 96           # the kernel's output, an intermediate: 96 MiB
eye = js.eye(n, dtype=jnp.float32, format="csr")
h = jnp.asarray(np.random.default_rng(0).standard_normal((n, width)), jnp.float32)
f = jax.jit(lambda a, h: (a @ h).sum(0))
want = np.asarray(h, np.float64).sum(0)
for _ in range(2):
  got = f(eye, h).block_until_ready()
per_call = []                    # the median call: the heap may still grow once in a while
for _ in range(7):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  got = f(eye, h).block_until_ready()
  per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = float(np.median(per_call))
with warnings.catch_warnings(record=True) as late:
  warnings.simplefilter("always")
  js.retain_host_memory()
print(json.dumps(dict(faults=faults, per_call=per_call, pages=n * width * 4 // 4096,
                      error=float(np.abs(np.asarray(got) - want).max() / np.abs(want).max()),
                      retained=js.host_memory.host_memory_retained(),
                      late_warning=[str(w.message) for w in late])))
"""


def _child(retain: bool) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JSCORCH_RETAIN_HOST_MEMORY="1" if retain else "0")
  proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                        env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(js.host_memory._glibc() is None, reason="tunes glibc's malloc only")
def test_retained_memory_spares_the_page_faults_of_every_call():
  default, retained = _child(False), _child(True)
  for run in (default, retained):
    assert run["error"] < 1e-6
  # without it, the 96 MiB intermediate is unmapped after each call and faulted in again:
  # every call faults. With it, calls reuse the pages; on a loaded machine some calls still
  # fault (memory pressure from other processes), so the test asks for one that does not.
  assert min(default["per_call"]) > 0.5 * default["pages"], default
  assert min(retained["per_call"]) < 0.05 * retained["pages"], retained
  # turned on late (after JAX ran), it says that the running threads keep their arenas
  assert not retained["late_warning"]
  assert any("before the first JAX computation" in w for w in default["late_warning"])


def test_limit_bytes_must_fit_a_c_int():
  with pytest.raises(ValueError, match=r"retain_host_memory: limit_bytes must be None or in"):
    js.retain_host_memory(2**31)
  with pytest.raises(ValueError, match=r"got -1"):
    js.retain_host_memory(-1)
