"""The README's examples run as written: every ```python block, in order, in one namespace.

Like a doctest of the whole file: a reader who pastes the blocks one after the other
into one interpreter gets no error (each block may use names defined by the blocks
before it). Runs in a fresh process (the README's imports and JAX state stay out of
the test process) on the CPU.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
  """The bodies of the ```python fenced blocks of a Markdown text, in order."""
  return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_python_blocks_are_found():
  blocks = python_blocks("a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n")
  assert blocks == ["x = 1\n", "y = x\n"]


def test_readme_python_examples_run(tmp_path):
  blocks = python_blocks((ROOT / "README.md").read_text())
  assert len(blocks) >= 8, "README.md lost its ```python examples"
  # One namespace, blocks in order; a failing block is reported by its number and line.
  driver = (
      "import sys, traceback\n"
      "ns = {'__name__': '__main__'}\n"
      f"blocks = {blocks!r}\n"
      "for k, src in enumerate(blocks, 1):\n"
      "  try:\n"
      "    exec(compile(src, f'README.md python block {k}', 'exec'), ns)\n"
      "  except BaseException:\n"
      "    traceback.print_exc()\n"
      "    sys.exit(f'README python block {k} failed')\n")
  res = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path, check=False,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  out = res.stdout
  assert "[ 4. 14. 14.]" in out, out                         # the js.grad example's values
  assert re.search(r"test accuracy 0\.(8|9)\d", out), out     # the GCN learned
  assert "SparseArray(float32[64, 128], format=CSR, nse=819)" in out, out
