"""Executes every notebook in ``notebooks/`` top to bottom with nbclient (no stored outputs needed).

The kernel is the interpreter running the tests: a ``python3`` kernelspec pointing at
``sys.executable`` is written to a temporary directory that is put first on
``JUPYTER_PATH``, so a user-level ``python3`` kernel of another environment is never picked
up. Notebooks run with their own folder as working directory and find data through the
project root (``../shared/data`` relative to it), falling back to synthetic data.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_quickstart", "02_gnn_cora", "03_moe_and_sparse_attention", "04_tensor_algebra"]
EXPECTED = {   # a line each notebook must print: evidence it did its job
    "01_quickstart": "same pattern: True",
    "02_gnn_cora": "GAT: final test accuracy",
    "03_moe_and_sparse_attention": "max |sparse - dense|",
    "04_tensor_algebra": "after training:  recall@10",
}


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  """A ``python3`` kernelspec for ``sys.executable``, first on ``JUPYTER_PATH``."""
  root = tmp_path_factory.mktemp("jupyter")
  spec_dir = root / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": "Python 3 (jscorch tests)", "language": "python"}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  old = os.environ.get("JUPYTER_PATH")
  os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root)] + ([old] if old else []))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  yield
  if old is None:
    os.environ.pop("JUPYTER_PATH", None)
  else:
    os.environ["JUPYTER_PATH"] = old


def test_kernel_is_this_interpreter(kernel_env):
  from jupyter_client.kernelspec import KernelSpecManager
  assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable


def test_all_notebooks_are_tested():
  assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, kernel_env):
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(NOTEBOOKS)}})
  start = time.perf_counter()
  client.execute()
  elapsed = time.perf_counter() - start
  text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.outputs)
  assert EXPECTED[name] in text, text[-2000:]
  print(f"{name}: {elapsed:.1f} s")
