"""Tests of the ``python -m jscorch`` command line, the README and the CI script."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jscorch
import jscorch.__main__
from jscorch import cli
from jscorch.primitives import kernel_build

ROOT = Path(__file__).resolve().parents[1]
MAIN_COMMAND = "pip install -e . && python -m jscorch demo"
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -n 2 tests'
QUICK_COMMAND = 'python -m pytest -n 2 -m "not slow" tests'
# demo and bench turn on js.retain_host_memory, which warns when JAX has already run in the
# process: true of any in-process call here (tests/test_host_memory.py tests the warning)
pytestmark = pytest.mark.filterwarnings("ignore:retain_host_memory:UserWarning")


def _run(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  return subprocess.run([sys.executable, "-m", "jscorch", *args], capture_output=True,
                        text=True, timeout=300, env=env, cwd=ROOT, check=False)


def _check_environment_lines(out: str):
  assert re.search(rf"^jscorch:\s+{re.escape(jscorch.__version__)}$", out, re.M), out
  for name in ("jax", "jaxlib", "numpy", "flax"):
    assert re.search(rf"^{name}:\s+\d+\.\d+", out, re.M), (name, out)
  assert re.search(r"^backend:\s+cpu$", out, re.M), out
  assert re.search(r"^devices:\s+\S", out, re.M), out
  assert re.search(r"^C compiler:\s+\S", out, re.M), out
  assert re.search(r"^config:\s+Settings\(lowering=", out, re.M), out


# -- command line ------------------------------------------------------------------------
def test_info_subprocess():
  res = _run("info")
  assert res.returncode == 0, res.stderr
  _check_environment_lines(res.stdout)


def test_demo_subprocess(tmp_path):
  plot = tmp_path / "curves.png"
  res = _run("demo", "--epochs", "30", "--plot", str(plot))
  assert res.returncode == 0, res.stderr
  out = res.stdout
  _check_environment_lines(out)
  assert "Graph('sbm(n=2000, classes=5, seed=0)': 2000 nodes" in out, out
  assert "conv1: kernel (500, 16), bias (16,)" in out, out
  m = re.search(r"final epoch:\s+train accuracy (\S+)\s+val accuracy (\S+)\s+test accuracy (\S+)",
                out)
  assert m, out
  assert float(m.group(3)) > 0.6, out               # the graph makes the task learnable
  assert re.search(r"best validation accuracy \S+ at epoch \d+: test accuracy \S+", out), out
  assert re.search(r"time per epoch: \d+\.\d+ ms", out), out
  assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "30/30" in res.stderr                       # the progress bar reached the end


def test_demo_with_data_file_logs_plain_lines(tmp_path, monkeypatch, capsys):
  from jscorch import graph
  path = tmp_path / "tiny.npz"
  graph.save_npz(path, graph.synthetic_sbm(num_nodes=60, num_features=20, num_classes=3,
                                           train_per_class=5, seed=1))
  monkeypatch.chdir(tmp_path)
  assert cli.main(["demo", "--data", str(path), "--epochs", "3"]) == 0
  captured = capsys.readouterr()
  assert "60 nodes" in captured.out and "test accuracy" in captured.out
  # stderr is not a terminal here: one plain line per reported epoch, no carriage returns.
  assert "\r" not in captured.err
  assert [line.split("  ")[0] for line in captured.err.splitlines() if "epoch" in line] == [
      "GCN epoch 1/3", "GCN epoch 2/3", "GCN epoch 3/3"], captured.err
  assert "loss" in captured.err
  assert (tmp_path / "gcn_training.png").exists()             # the default --plot


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_plain_lines_when_not_a_terminal():
  stream = io.StringIO()
  bar = cli.Progress(25, "GCN", stream=stream)
  for k in range(25):
    bar.update({"loss": 1.0 / (k + 1), "train_acc": 0.5, "val_acc": 0.25})
  bar.close()
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue()
  assert [line.split("  ")[0] for line in lines] == [
      f"GCN epoch {n}/25" for n in (1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25)]
  assert lines[-1] == "GCN epoch 25/25  loss 0.0400  train 0.500  val 0.250"


def test_progress_bar_on_a_terminal():
  stream = _Terminal()
  bar = cli.Progress(4, "GCN", stream=stream)
  assert bar.bar is not None                                 # a rich bar
  for _ in range(4):
    bar.update({"loss": 0.5, "train_acc": 1.0, "val_acc": 0.75})
  bar.close()
  out = stream.getvalue()
  assert "4/4" in out and "loss 0.5000" in out and "GCN epoch" not in out, out


def test_demo_bad_arguments(tmp_path, capsys):
  assert cli.main(["demo", "--epochs", "0"]) == 2
  assert "--epochs must be at least 1" in capsys.readouterr().err
  assert cli.main(["demo", "--data", str(tmp_path / "absent.npz"), "--no-plot"]) == 2
  assert "cannot load --data" in capsys.readouterr().err


def test_default_subcommand_is_demo(monkeypatch):
  calls = []
  monkeypatch.setattr(cli, "cmd_demo", lambda args: calls.append(args.seed) or 0)
  assert cli.main([]) == 0
  assert calls == [0]


def test_info_in_process(capsys):
  assert cli.main(["info"]) == 0
  _check_environment_lines(capsys.readouterr().out)


def test_unknown_subcommand_exits_2(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["no-such-command"])
  assert e.value.code == 2
  assert "invalid choice" in capsys.readouterr().err


def test_version_flag(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--version"])
  assert e.value.code == 0
  assert capsys.readouterr().out.strip() == f"jscorch {jscorch.__version__}"


def test_script_entry_point_is_cli_main():
  # pyproject.toml declares `jscorch = "jscorch.__main__:main"`.
  assert jscorch.__main__.main is cli.main


@pytest.fixture
def fresh_compiler():
  """``kernel_build.compiler`` detected anew in the test and again after it (the cached
  answer is per process, and the other tests need the real one)."""
  kernel_build.compiler.cache_clear()
  yield kernel_build.compiler
  kernel_build.compiler.cache_clear()


def test_compiler_respects_cc(monkeypatch, fresh_compiler):
  monkeypatch.setenv("CC", "definitely-not-a-compiler-xyz")
  monkeypatch.setenv("PATH", "")
  assert fresh_compiler() is None
  assert dict(cli.environment())["C compiler"] == "none"


def test_compiler_splits_cc_with_flags(monkeypatch, fresh_compiler, tmp_path):
  """``$CC`` may carry flags (``"gcc -m64"``): the command keeps them, and ``info`` shows it."""
  fake = tmp_path / "my cc"                # a space in the path: quoted in the command
  fake.write_text("#!/bin/sh\necho \"fake-cc 1.0 $*\"\n")
  fake.chmod(0o755)
  monkeypatch.setenv("CC", f"'{fake}' -m64 -DX=1")
  command, version = fresh_compiler()
  assert kernel_build.compiler_argv(command) == [str(fake), "-m64", "-DX=1"]
  assert version == "fake-cc 1.0 -m64 -DX=1 --version"
  assert dict(cli.environment())["C compiler"] == f"{command}: {version}"


# -- README and CI -------------------------------------------------------------------------
def test_readme_has_setup_commands_verbatim():
  readme = (ROOT / "README.md").read_text()
  assert MAIN_COMMAND in readme
  assert TEST_COMMAND in readme
  assert QUICK_COMMAND in readme


def test_slow_marker_is_registered_and_selects(pytestconfig):
  """``-m "not slow"`` (the README's quick run) deselects the slow tests, and only them."""
  markers = pytestconfig.getini("markers")
  assert any(m.startswith("slow:") for m in markers), markers
  res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "slow",
                        "-p", "no:xdist", "tests/test_notebooks.py", "tests/test_cli.py"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
  assert res.returncode == 0, res.stdout + res.stderr
  selected = [line for line in res.stdout.splitlines() if "::" in line]
  assert selected and all("test_notebook_runs" in line for line in selected), res.stdout


def test_ci_runs_the_readme_test_command():
  script = ROOT / ".ci" / "run"
  text = script.read_text()
  assert any(line.strip() == TEST_COMMAND for line in text.splitlines()), text
  assert "set -euo pipefail" in text
  assert "JAX_PLATFORMS=cpu" in text
  assert os.access(script, os.X_OK), f"{script} is not executable"


def test_bench_checks_spgemm_as_sparse_difference_and_gcn_torch_runs():
  """``bench``: every SpGEMM contender is checked against the float64 product as a sparse
  difference (column order and explicit zeros do not matter, a wrong value does), and
  the torch GCN contender runs in float32."""
  import numpy as np
  import scipy.sparse as sps
  from jscorch.bench import data, runner, workloads
  m = data.rmat(7, 600, seed=3)
  wl = workloads.spgemm(m)
  (ref,) = wl.reference
  assert {c.name for c in wl.contenders} >= {"jscorch", "scipy"}
  for c in wl.contenders:
    assert runner.relative_error(c.to_numpy(c.run()), wl.reference) < 1e-6, c.name
  shuffled = ref.copy()                         # same matrix, columns reversed in each row
  for i in range(ref.shape[0]):
    lo, hi = ref.indptr[i], ref.indptr[i + 1]
    shuffled.indices[lo:hi] = ref.indices[lo:hi][::-1]
    shuffled.data[lo:hi] = ref.data[lo:hi][::-1]
  coo = ref.tocoo()
  free = next((i, j) for i in range(ref.shape[0]) for j in range(ref.shape[1])
              if ref[i, j] == 0)
  with_zero = sps.csr_matrix((np.append(coo.data, 0.0), (np.append(coo.row, free[0]),
                                                          np.append(coo.col, free[1]))),
                             shape=ref.shape)
  assert with_zero.nnz == ref.nnz + 1           # an explicit zero outside ref's pattern
  assert runner.relative_error((shuffled,), (ref,)) < 1e-12
  assert runner.relative_error((with_zero,), (ref,)) < 1e-12
  wrong = ref.copy()
  wrong.data[0] += 1.0
  assert runner.relative_error((wrong,), (ref,)) > 1e-3
  assert runner.relative_error((ref[:-1],), (ref,)) == float("inf")
  with pytest.raises(ValueError, match="jscorch: result columns are not sorted"):
    workloads._sorted_csr(shuffled.indptr, shuffled.indices, shuffled.data, ref.shape, "jscorch")
  pytest.importorskip("torch")
  gcn = workloads.gcn(m, 8, False)
  (torch_step,) = [c for c in gcn.contenders if c.name == "torch"]
  assert runner.relative_error(torch_step.to_numpy(torch_step.run()), gcn.reference) < 1e-5


def test_bench_rectangular_spmm_contenders_are_checked():
  """``bench --only SpMM-small``'s features-times-weight row: a rectangular matrix, every
  contender right."""
  from jscorch.bench import data, runner, workloads
  wl = workloads.spmm(data.uniform(30, 200, seed=5, cols=17), 16)
  assert wl.reference[0].shape == (30, 16)
  for c in wl.contenders:
    assert runner.relative_error(c.to_numpy(c.run()), wl.reference) < 1e-5, c.name


def test_bench_sparse_linear_contenders_are_checked():
  """``bench --only SparseLinear``: every contender's loss and gradients (W's values, x)
  match the float64 reference, and a wrong gradient is caught."""
  import numpy as np
  from jscorch.bench import runner, workloads
  wl = workloads.sparse_linear(16, 12, 8, 0.3)
  assert {c.name for c in wl.contenders} >= {"jscorch", "dense", "BCOO"}
  for c in wl.contenders:
    assert runner.relative_error(c.to_numpy(c.run()), wl.reference) < 1e-5, c.name
  value, d_w, d_x = wl.contenders[0].to_numpy(wl.contenders[0].run())
  assert runner.relative_error((value, d_w * 1.01, d_x), wl.reference) > 1e-3
  assert np.asarray(d_w).shape == wl.reference[1].shape


def test_bench_measure_repeats_short_calls_and_keeps_the_result(monkeypatch):
  """A call of microseconds is timed many times (a median of three would be noise); a
  call whose repeats fill the time budget is timed ``repeats`` times, after two untimed
  ones (compile, peak memory)."""
  import time

  from jscorch.bench import timing
  monkeypatch.setattr(timing, "MIN_TIMED_S", 0.2)        # (the suite sets 0)
  calls = []
  m = timing.measure(lambda: calls.append(1) or len(calls), 3)
  assert timing.MAX_REPEATS + 2 >= len(calls) > 100 and m.result == len(calls)
  calls.clear()
  m = timing.measure(lambda: time.sleep(0.08) or calls.append(1) or len(calls), 3)
  assert len(calls) == 5 and m.result == 5 and 70 < m.median_ms < 200


def test_bench_refuses_unknown_workloads(capsys):
  from jscorch import cli
  assert cli.main(["bench", "--only", "SpMV", "Nope"]) == 2
  err = capsys.readouterr().err
  assert "unknown workload(s) Nope" in err and "SparseLinear" in err


def test_bench_kernel_build_section(capsys):
  """``bench --only build``: a new kernel is compiled in one fresh process and loaded from
  the disk cache in a second; loading must be much cheaper than compiling."""
  from jscorch.bench import runner
  rows = runner.run("quick", only={"build"})
  out = capsys.readouterr().out
  (row,) = rows
  t = row["results"]
  assert row["workload"] == "kernel build"
  assert 0 < t["warm_build_s"] < t["cold_build_s"] <= t["cold_s"], t
  assert 0 < t["warm_s"] and t["hot_ms"] > 0
  assert re.search(r"cold \(C compile\)\s+\d+\.\d{3}\s+\d+\.\d{3}", out), out
  assert re.search(r"warm \(cached binary\)\s+\d+\.\d{3}\s+\d+\.\d{3}", out), out
