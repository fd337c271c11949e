"""``jscorch.distributed``: host-side partitioning here; device checks on 8 simulated devices.

The checks that need a mesh of 8 CPU devices live in ``tests/distributed/mesh8/``
(``check_*.py``) and run in a child ``python -m pytest`` started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``: this process initialised JAX
with one device before any test ran, and the device count is fixed at that point.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from jscorch.bench import data
from jscorch.distributed import halo
from jscorch.distributed.partition import Partition, imbalance

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run_child(targets: str, devices: int = 8, timeout: int = 600) -> subprocess.CompletedProcess:
  """``python -m pytest`` on ``mesh8/<target>`` (space-separated) with ``devices`` CPU devices."""
  env = dict(os.environ, JSCORCH_TEST_MESH8="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
             + os.environ.get("XLA_FLAGS", ""))     # with conftest's fast-compile flags
  env.pop("PYTEST_XDIST_WORKER", None)
  cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-o", "python_files=check_*.py", "-o", "addopts=", "-W", "ignore::UserWarning",
         *[os.path.join(HERE, "mesh8", t) for t in targets.split()]]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# one child per test module (pytest-xdist spreads them), each paying JAX's start-up once;
# mesh8/check_layers.py runs from tests/distributed/test_layers.py
@pytest.mark.slow
def test_on_8_devices():
  """Runs ``mesh8/check_products.py``, ``check_errors.py`` and ``check_bench.py`` on 8
  simulated CPU devices."""
  proc = run_child("check_products.py check_errors.py check_bench.py")
  tail = (proc.stdout[-12000:] + "\n" + proc.stderr[-4000:]).strip()
  assert proc.returncode == 0, tail
  assert " passed" in proc.stdout and "skipped" not in proc.stdout.split("\n")[-2], tail


# -- host-side partitioning (no devices needed) ---------------------------------------------------
def test_partition_balanced_is_optimal_and_contiguous():
  w = np.array([5, 1, 1, 1, 1, 1, 4, 1, 1])
  part = Partition.balanced(w, 3)
  loads = np.add.reduceat(w, part.bounds[:-1])
  assert part.bounds[0] == 0 and part.bounds[-1] == len(w)
  # best possible largest part: 6 (5+1 | 1+1+1+1 | 4+1+1 would be 6, 4, 6)
  assert loads.max() == 6
  brute = min(max(w[:i].sum(), w[i:j].sum(), w[j:].sum())
              for i in range(len(w) + 1) for j in range(i, len(w) + 1))
  assert loads.max() == brute


def test_partition_layout_maps():
  part = Partition.from_bounds([0, 1, 4])
  assert part.size == 3 and part.padded == 6
  np.testing.assert_array_equal(part.position(), [0, 3, 4, 5])
  np.testing.assert_array_equal(part.padded_index(), [0, 4, 4, 1, 2, 3])
  np.testing.assert_array_equal(part.valid(), [1, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(part.owner(np.arange(4)), [0, 1, 1, 1])


def test_partition_more_parts_than_rows():
  part = Partition.balanced(np.array([3, 1]), 4)
  assert part.n_parts == 4 and part.size >= 1 and part.n == 2


@pytest.mark.parametrize("scale,edges", [(12, 40_000), (14, 250_000)])
def test_rmat_partition_imbalance(scale, edges):
  """The host partition alone: max/mean nonzeros <= 1.1 for 8 parts of an R-MAT graph."""
  w = np.diff(data.rmat(scale, edges).indptr)
  part = Partition.balanced(w, 8)
  assert imbalance(np.add.reduceat(w, part.bounds[:-1])) <= 1.1


def test_halo_plan_maps_every_entry():
  """Every entry's halo column points at the received copy of its x row."""
  m = data.uniform(40, 200, seed=2)
  cols = Partition.balanced(np.diff(m.indptr), 4)
  # stacked local CSR over global columns, as shard() builds them (1-D, square)
  pos, crd = [], []
  nse = max(m.indptr[b] - m.indptr[a] for a, b in zip(cols.bounds, cols.bounds[1:]))
  for a, b in zip(cols.bounds, cols.bounds[1:]):
    p = m.indptr[a:b + 1] - m.indptr[a]
    pos.append(np.concatenate([p, np.full(cols.size + 1 - len(p), p[-1])]))
    c = m.indices[m.indptr[a]:m.indptr[b]]
    crd.append(np.concatenate([c, np.full(nse - len(c), 40)]))
  pos, crd = np.stack(pos), np.stack(crd)
  plan = halo.plan(pos, crd, cols)
  x = np.arange(40) + 100                                # x row i holds i + 100
  for s in range(4):
    local = x[cols.bounds[s]:cols.bounds[s + 1]]
    space = [np.concatenate([local, np.zeros(cols.size - len(local), int)])]
    at = 0
    for d, h in plan.shifts:                             # what shard s receives on shift d
      t = (s - d) % 4
      src = np.concatenate([x[cols.bounds[t]:cols.bounds[t + 1]], [0]])
      space.append(src[np.minimum(plan.send[t, at:at + h], len(src) - 1)])
      at += h
    space = np.concatenate(space + [[-1]])
    live = crd[s] < 40
    got = space[plan.crd[s]][: live.sum()]
    want = np.concatenate([x, [-1]])[crd[s][plan.perm[s]]][: live.sum()]
    np.testing.assert_array_equal(got, want)
    rows = np.repeat(np.arange(cols.size), np.diff(pos[s]))
    assert np.all(np.diff(rows * 10_000 + plan.crd[s][: live.sum()]) > 0)   # rows stay sorted

