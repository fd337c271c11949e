"""Two processes on localhost run the sharded products under ``jax.distributed`` (CPU, gloo)."""
import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_localhost():
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                       + os.environ.get("XLA_FLAGS", ""))     # conftest's fast-compile flags
  script = os.path.join(HERE, "_mp_worker.py")
  procs = [subprocess.Popen([sys.executable, script, str(i), str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=300)
      outputs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-6000:]}"
    assert f"OK {i}" in out, out[-3000:]
