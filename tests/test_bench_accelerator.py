"""The accelerator workloads of ``python -m jscorch bench --platform ...``
(``jscorch.bench.accelerator``), at tiny sizes on the CPU: every JAX contender matches its
float64 reference (``jscorch`` and ``jscorch-portable`` included), contenders that need a GPU
are skipped with their reason, and a platform without a device, or an unknown workload,
exits 2 with one clear line before anything runs."""
import numpy as np
import pytest

from jscorch import cli
from jscorch.bench import accelerator as acc
from jscorch.bench.runner import WRONG, _run_workload

TINY = {
    "SpMM": lambda: acc.spmm(acc.data.rmat(7, 600), 8),
    "SDDMM": lambda: acc.sddmm(acc.data.uniform(128, 600), 8),
    "BSR-SpMM": lambda: acc.bsr_spmm(64, 16, 8, 0.25),
    "GCN": lambda: acc.gcn(acc.data.rmat(7, 600), 8),
    "block-attention": lambda: acc.block_attention(64, 16, 16, 2),
    "MoE": lambda: acc.moe(32, 8, 4),
}


@pytest.mark.parametrize("name", list(TINY))
def test_every_contender_is_right(name):
  wl = TINY[name]()
  row = _run_workload(wl, 1, lambda *_: None)
  by = {r["impl"]: r for r in row["results"]}
  assert {"jscorch", "jscorch-portable"} <= set(by)
  for impl, r in by.items():
    if "skipped" in r:
      continue
    assert "error" not in r, (impl, r)
    assert not r.get("wrong") and r["rel_err"] <= WRONG, (impl, r["rel_err"])


def test_block_matrix_keeps_the_asked_blocks():
  a = acc.block_matrix(64, 16, 0.25, seed=1)
  blocks = np.abs(a.reshape(4, 16, 4, 16)).sum(axis=(1, 3)) != 0
  assert int(blocks.sum()) == 4


@pytest.mark.filterwarnings("ignore:retain_host_memory:UserWarning")   # JAX ran here before
def test_platform_without_a_device_exits_2(capsys):
  assert cli.main(["bench", "--platform", "tpu", "--quick"]) == 2
  err = capsys.readouterr().err
  assert "bench: --platform tpu: no TPU device visible to JAX" in err
  assert err.count("\n") == 1
  assert cli.main(["bench", "--platform", "cpu", "--only", "SpGEMM"]) == 2
  assert "unknown workload(s) SpGEMM; expected names among SpMM SDDMM BSR-SpMM" in \
      capsys.readouterr().err
