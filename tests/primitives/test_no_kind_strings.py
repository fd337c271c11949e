"""No level-kind comparisons outside the level modules (``primitives/formats/``).

Code that needs to know how a level behaves asks it (``lvl.buffers``, ``lvl.full``,
``lvl.capacity(...)``, ``lvl.positions(...)``, ...): adding a level type is then one
module plus :func:`register_level`. This test parses every module of ``jscorch/``
and ``primitives/`` and fails listing each comparison of a level's ``kind`` with
anything, each comparison with the ``DENSE`` / ``COMPRESSED`` / ``SINGLETON``
constants, each comparison of a level name string (``"dense"``, ...) with something
named like a level or kind, each import of those constants, and each table lookup
keyed by ``.kind``.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCANNED = ("jscorch", "primitives")
LEVEL_MODULES = "primitives/formats/"
ALLOWED: tuple[str, ...] = ()      # (the einsum kernel path asks the levels since issue 12)

_NAMES = {"dense", "compressed", "singleton"}
_CONSTANTS = {"DENSE", "COMPRESSED", "SINGLETON"}


def _parts(node):
  """The node and, for a tuple / list / set literal, its elements."""
  if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
    return list(node.elts)
  return [node]


def _is_kind(node) -> bool:
  return isinstance(node, ast.Attribute) and node.attr == "kind"


def _is_constant(node) -> bool:
  return (isinstance(node, ast.Name) and node.id in _CONSTANTS) or \
      (isinstance(node, ast.Attribute) and node.attr in _CONSTANTS)


def _is_level_string(node) -> bool:
  return isinstance(node, ast.Constant) and node.value in _NAMES


def _names_a_level(node) -> bool:
  """``kind``, ``lvl``, ``level_name``, ``x.name``, ``l.kind``, ... anywhere in ``node``."""
  for sub in ast.walk(node):
    text = sub.id if isinstance(sub, ast.Name) else sub.attr if isinstance(sub, ast.Attribute) \
        else None
    if text is not None and (text == "name" or any(w in text.lower()
                                                   for w in ("kind", "lvl", "level"))):
      return True
  return False


def kind_comparisons(source: str) -> list[tuple[int, str]]:
  """``(line, text)`` of every level-kind comparison in ``source`` (see the module docstring)."""
  found = []
  lines = source.splitlines()
  for node in ast.walk(ast.parse(source)):
    hit = False
    if isinstance(node, ast.Compare):
      operands = [node.left] + list(node.comparators)
      flat = [p for op in operands for p in _parts(op)]
      hit = any(_is_kind(sub) for op in operands for sub in ast.walk(op)) or \
          any(_is_constant(p) for p in flat) or \
          (any(_is_level_string(p) for p in flat) and any(_names_a_level(op) for op in operands))
    elif isinstance(node, ast.Subscript):
      hit = _is_kind(node.slice)
    elif isinstance(node, ast.ImportFrom):
      hit = any(alias.name in _CONSTANTS for alias in node.names)
    if hit:
      found.append((node.lineno, lines[node.lineno - 1].strip()))
  return found


def _modules():
  for top in SCANNED:
    for path in sorted((ROOT / top).rglob("*.py")):
      rel = path.relative_to(ROOT).as_posix()
      if not rel.startswith(LEVEL_MODULES):
        yield rel


def test_no_level_kind_comparisons_outside_level_modules():
  found = []
  for rel in _modules():
    if rel in ALLOWED:
      continue
    found += [f"{rel}:{line}: {text}"
              for line, text in kind_comparisons((ROOT / rel).read_text())]
  assert not found, ("level-kind comparisons outside primitives/formats/ (ask the level "
                     "instead: lvl.buffers, lvl.full, lvl.branchless, lvl.capacity(...)):\n"
                     + "\n".join(found))


@pytest.mark.parametrize("code, flagged", [
    ("if lvl.kind == 'dense': pass", True),
    ("ok = l.kind != DENSE", True),
    ("x = any(l.kind in ('singleton',) for l in levels)", True),
    ("x = tuple(l.kind for l in levels) == (DENSE, COMPRESSED)", True),
    ("if kind in ('dense', 'compressed'): pass", True),
    ("if lvl.name == 'singleton': pass", True),
    ("from .formats import DENSE", True),
    ("f = TABLE[lvl.kind]", True),
    ("if out_format.lower() == 'dense': pass", False),
    ("if spec.out_kind == DENSE_OUT: pass", False),
    ("if kind in ('slice', 'int', 'array'): pass", False),
    ("if lvl.full and not lvl.has_pos: pass", False),
    ("s = 'if (how == DENSE) {'", False),
], ids=["kind_eq_string", "kind_ne_constant", "kind_in_tuple", "kinds_tuple_eq",
        "bare_kind_in_names", "name_eq_string", "import_constant", "table_by_kind",
        "out_format_string", "out_kind", "index_kinds", "capabilities", "c_text"])
def test_checker_flags_kind_comparisons_only(code, flagged):
  assert bool(kind_comparisons(code)) == flagged
