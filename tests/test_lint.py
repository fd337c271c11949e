"""Code hygiene: ruff (configured in pyproject.toml) passes, and the import layering holds."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import jscorch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _jscorch_imports(path: pathlib.Path) -> set[str]:
  """The ``jscorch.*`` modules a file imports (anywhere in it, lazy imports included)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names |= {node.module} if node.module != "jscorch" else {
          f"jscorch.{a.name}" for a in node.names}
    elif isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
  return {n for n in names if n == "jscorch" or n.startswith("jscorch.")}


def test_ruff_passes():
  result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "jscorch",
                           "primitives"], cwd=ROOT, capture_output=True, text=True)
  assert "No module named ruff" not in result.stderr, (
      "ruff is missing: install the test extra, pip install -e '.[test]'.")
  assert result.returncode == 0, (
      f"ruff check jscorch primitives found problems (fix them, or `ruff check --fix` for the "
      f"fixable ones):\n{result.stdout}{result.stderr}")


def test_array_imports_only_primitives():
  """The ops layer imports jscorch.array; jscorch._methods attaches its methods back."""
  outside = {n for n in _jscorch_imports(ROOT / "jscorch" / "array.py")
             if not n.startswith("jscorch.primitives")}
  assert not outside, f"jscorch/array.py imports {sorted(outside)}; move that use to _methods.py"


def test_primitives_import_nothing_else_of_jscorch():
  for path in sorted((ROOT / "primitives").rglob("*.py")):
    outside = {n for n in _jscorch_imports(path) if not n.startswith("jscorch.primitives")}
    assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def test_public_names_exist_and_cover_the_unary_table():
  missing = [n for n in jscorch.__all__ if not hasattr(jscorch, n)]
  assert not missing, f"jscorch.__all__ names missing attributes: {missing}"
  assert set(jscorch.ZERO_PRESERVING) <= set(jscorch.__all__)
  assert len(set(jscorch.__all__)) == len(jscorch.__all__)


def test_method_stubs_match_the_attached_methods():
  """Every method declared under ``if TYPE_CHECKING:`` in array.py is set by _methods.py."""
  tree = ast.parse((ROOT / "jscorch" / "array.py").read_text())
  cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SparseArray")
  block = next(n for n in cls.body if isinstance(n, ast.If) and ast.unparse(n.test) ==
               "TYPE_CHECKING")
  stubs = {n.name for n in block.body if isinstance(n, ast.FunctionDef)}
  attached = {name for name, v in vars(jscorch.SparseArray).items()
              if getattr(v, "__globals__", {}).get("__name__") == "jscorch._methods"}
  assert stubs == attached, (sorted(stubs - attached), sorted(attached - stubs))
