"""``js.enable_compilation_cache``: a new process stores its compiled programs, and a second
one loads them instead of compiling (run in child processes: the setting is process-wide)."""
import json
import os
import subprocess
import sys

_CHILD = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax._src import monitoring
import jscorch as js
hits = []
monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
path = js.enable_compilation_cache(sys.argv[1])
A = js.from_dense(jnp.asarray(np.diag(np.arange(1.0, 6.0)), jnp.float32), format="csr")
y = jax.jit(lambda A, x: js.einsum("ij,j->i", A, x))(A, jnp.ones(5, jnp.float32))
print(json.dumps(dict(path=str(path), y=np.asarray(y).tolist(), hits=len(hits))))
"""


def _child(cache):
  proc = subprocess.run([sys.executable, "-c", _CHILD, str(cache)], capture_output=True,
                        text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_compiled_program(tmp_path):
  cache = tmp_path / "xla"
  first = _child(cache)
  assert first["path"] == str(cache) and first["hits"] == 0
  assert first["y"] == [1.0, 2.0, 3.0, 4.0, 5.0]
  stored = os.listdir(cache)
  assert stored, "nothing was written to the cache"
  second = _child(cache)
  assert second["y"] == first["y"] and second["hits"] >= 1
