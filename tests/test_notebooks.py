"""Executes every notebook in ``notebooks/`` top to bottom with nbclient.

The notebooks are committed with their outputs (so a reader on the web sees the
results); this test re-executes them in memory and checks each prints its evidence
line. The kernel is the interpreter running the tests: a ``python3`` kernelspec
pointing at ``sys.executable`` is written to a temporary directory that is put first on
``JUPYTER_PATH``, so a user-level ``python3`` kernel of another environment is never
picked up. Notebooks run with their own folder as working directory; notebook 02 reads
Cora from ``$JSCORCH_CORA`` (set here to the development checkout's data file when it
exists) and otherwise uses the synthetic graph.

The kernel's own stderr goes to a log file, shown when a notebook fails: jupyter_client
interrupts (SIGINT) a kernel before shutting it down, and a kernel interrupted inside a
garbage-collection callback prints an "Exception ignored ... KeyboardInterrupt"
traceback that would otherwise land at the end of the pytest run.

To refresh the stored outputs after changing a notebook::

  JSCORCH_CORA=/path/to/cora.npz python tests/test_notebooks.py [NAME ...]
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CORA = ROOT.parent / "shared" / "data" / "cora.npz"      # the development checkout's data
NAMES = ["01_quickstart", "02_gnn_cora", "03_moe_and_sparse_attention", "04_tensor_algebra"]
EXPECTED = {   # a line each notebook must print: evidence it did its job
    "01_quickstart": "same pattern: True",
    "02_gnn_cora": "GAT: final test accuracy",
    "03_moe_and_sparse_attention": "max |sparse - dense|",
    "04_tensor_algebra": "after training:  recall@10",
}


@contextlib.contextmanager
def python3_kernel():
  """A ``python3`` kernelspec for ``sys.executable``, first on ``JUPYTER_PATH``."""
  saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "JAX_PLATFORMS", "JSCORCH_CORA")}
  with tempfile.TemporaryDirectory() as root:
    spec_dir = Path(root) / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (jscorch)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [root] + ([saved["JUPYTER_PATH"]] if saved["JUPYTER_PATH"] else []))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if CORA.exists():
      os.environ.setdefault("JSCORCH_CORA", str(CORA))
    try:
      yield
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v


def execute(name: str, log_dir: Path):
  """Runs notebook ``name``; returns ``(notebook, seconds, kernel stderr text)``."""
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                                   resources={"metadata": {"path": str(NOTEBOOKS)}})
  log = log_dir / f"{name}.kernel-stderr.txt"
  start = time.perf_counter()
  with open(log, "w") as stderr:
    try:
      client.execute(stderr=stderr)
    finally:
      stderr.flush()
  return nb, time.perf_counter() - start, log.read_text()


def printed_text(nb) -> str:
  return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.outputs)


def clean_outputs(nb) -> None:
  """Keeps what a reader needs: drops stderr streams (warnings) and execution metadata."""
  for cell in nb.cells:
    if cell.cell_type != "code":
      continue
    cell.outputs = [o for o in cell.outputs
                    if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    cell.metadata.pop("execution", None)


@pytest.fixture(scope="module")
def kernel_env():
  with python3_kernel():
    yield


def test_kernel_is_this_interpreter(kernel_env):
  from jupyter_client.kernelspec import KernelSpecManager
  assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable


def test_all_notebooks_are_tested():
  assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_committed_with_outputs(name):
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  assert EXPECTED[name] in printed_text(nb), \
      f"{name}: no stored outputs (run `python tests/test_notebooks.py {name}`)"
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.get("name") == "stderr"], "stored stderr (warnings)"
  assert (NOTEBOOKS / f"{name}.ipynb").stat().st_size < 400_000, "outputs too large"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, kernel_env, tmp_path):
  try:
    nb, elapsed, stderr = execute(name, tmp_path)
  except Exception as e:
    logs = "".join(p.read_text() for p in tmp_path.glob("*.txt"))
    e.add_note(f"kernel stderr:\n{logs[-4000:]}")
    raise
  text = printed_text(nb)
  assert EXPECTED[name] in text, text[-2000:] + "\nkernel stderr:\n" + stderr[-2000:]
  print(f"{name}: {elapsed:.1f} s")


if __name__ == "__main__":     # refresh the stored outputs
  with python3_kernel(), tempfile.TemporaryDirectory() as logs:
    for name in sys.argv[1:] or NAMES:
      nb, elapsed, _ = execute(name, Path(logs))
      clean_outputs(nb)
      nbformat.write(nb, NOTEBOOKS / f"{name}.ipynb")
      print(f"{name}: executed in {elapsed:.1f} s, outputs saved")
