"""Fixtures of the checks that run on 8 simulated CPU devices, in a child process.

``tests/distributed/test_shard.py`` starts ``python -m pytest`` on this folder with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (JAX reads it when it
initialises its backend, which the parent pytest process has already done with one
device) and ``-o python_files=check_*.py``, so the parent never collects these files.
"""
import os

import numpy as np
import pytest

CHILD = os.environ.get("JSCORCH_TEST_MESH8") == "1"


@pytest.fixture(scope="session", autouse=True)
def eight_devices():
  import jax
  if not CHILD or jax.device_count() != 8:
    pytest.skip("runs in the 8-device child process started by tests/distributed/test_shard.py")


@pytest.fixture(scope="session")
def meshes():
  """Auto-axis meshes (no mesh context needed): 1-D over 8, 2-D 4×2 and 2×4."""
  import jax
  from jax.sharding import AxisType
  auto = lambda shape, names: jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(
      shape))
  return {"1d": (auto((8,), ("x",)), "x"), "2d": (auto((4, 2), ("r", "c")), ("r", "c")),
          "2d_wide": (auto((2, 4), ("r", "c")), ("r", "c"))}


@pytest.fixture(scope="session")
def matrices():
  """Host scipy CSR matrices: uniform square and rectangular, R-MAT, symmetric R-MAT graph."""
  import scipy.sparse as sp
  from jscorch.bench import data
  uniform = data.uniform(300, 2400, seed=3).scipy()
  rng = np.random.default_rng(4)
  rect = sp.random(300, 200, density=0.04, format="csr", random_state=rng, dtype=np.float32)
  rect.data = rng.uniform(0.5, 2.0, rect.nnz).astype(np.float32)
  rmat = data.rmat(9, 4000, seed=5).scipy()
  graph = (rmat + rmat.T).tocsr()
  graph.data = np.abs(graph.data) + 0.1
  return {"uniform": uniform, "rect": rect, "rmat": rmat, "graph": graph.astype(np.float32)}
