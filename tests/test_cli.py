"""Tests of the ``python -m jscorch`` command line, the README and the CI script."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jscorch
import jscorch.__main__
from jscorch import cli

ROOT = Path(__file__).resolve().parents[1]
MAIN_COMMAND = "pip install -e . && python -m jscorch demo"
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -n 2 tests'


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


def test_demo_subprocess():
  res = _run("demo")
  assert res.returncode == 0, res.stderr
  out = res.stdout
  _check_environment_lines(out)
  assert "A        = SparseArray(float32[6, 8], format=CSR, nse=12)" in out, out
  for name in ("COO", "CSC", "DCSR"):
    assert re.search(rf"SparseArray\(float32\[6, 8\], format={name}, nse=12\)\s+"
                     r"todense matches: True", out), (name, out)
  assert "g = js.grad(loss)(A, x) = SparseArray(float32[6, 8], format=CSR, nse=12)" in out
  assert "same pattern as A: True" in out
  m = re.search(r"jax\.jit\(loss\)\(A, x\) = (\S+)\ndense reference\s+= (\S+)", out)
  assert m and m.group(1) == m.group(2), out


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


def test_find_c_compiler_respects_cc(monkeypatch):
  monkeypatch.setenv("CC", "definitely-not-a-compiler-xyz")
  monkeypatch.setenv("PATH", "")
  assert cli.find_c_compiler() is None


# -- README and CI -------------------------------------------------------------------------
def test_readme_has_setup_commands_verbatim():
  readme = (ROOT / "README.md").read_text()
  assert MAIN_COMMAND in readme
  assert TEST_COMMAND in readme


def test_ci_runs_the_readme_test_command():
  script = ROOT / ".ci" / "run"
  text = script.read_text()
  assert any(line.strip() == TEST_COMMAND for line in text.splitlines()), text
  assert "set -euo pipefail" in text
  assert "JAX_PLATFORMS=cpu" in text
  assert os.access(script, os.X_OK), f"{script} is not executable"


def test_readme_python_examples_run():
  readme = (ROOT / "README.md").read_text()
  blocks = re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)
  assert blocks, "README.md has no ```python block"
  code = "\n".join(blocks)
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, check=False,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert res.returncode == 0, res.stderr
  assert "[ 4. 14. 14.]" in res.stdout, res.stdout
