"""The ``python -m jscorch`` command line.

Subcommands:

* ``info``: versions of jscorch and its dependencies, the JAX backend and
  devices, the C compiler the kernel builder would use, and ``jscorch.config``.
* ``demo`` (the default): the environment, then a small worked example of
  sparse formats, ``jit`` and ``js.grad``.

Each subcommand is one ``_add_<name>`` function that registers its parser and
one ``cmd_<name>`` function that runs it and returns the exit code; to add a
subcommand, write both and list the ``_add_`` function in ``_SUBCOMMANDS``.

Example:
  >>> from jscorch import cli
  >>> cli.build_parser().parse_args(["info"]).command
  'info'
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shlex
import shutil
import subprocess
import sys
from typing import Callable, Sequence

DEFAULT_COMMAND = "demo"


# -- environment ---------------------------------------------------------------------------
def _version(dist: str) -> str:
  """The installed version of distribution ``dist``, or ``"not installed"``."""
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def find_c_compiler() -> tuple[str, str] | None:
  """The C compiler generated kernels would be built with.

  Looks at ``$CC`` first (which may carry flags, e.g. ``"gcc -m64"``), then ``cc``,
  then ``gcc`` on ``PATH``.

  Returns:
    ``(command, first line of its --version output)``, or None when no compiler
    is found or it does not answer ``--version``.
  """
  candidates = []
  if os.environ.get("CC", "").strip():
    candidates.append(shlex.split(os.environ["CC"]))
  candidates += [["cc"], ["gcc"]]
  for cmd in candidates:
    if shutil.which(cmd[0]) is None:
      continue
    try:
      out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=10,
                           check=False)
    except (OSError, subprocess.SubprocessError):
      continue
    if out.returncode == 0:
      lines = (out.stdout or out.stderr).strip().splitlines()
      return " ".join(cmd), (lines[0] if lines else "unknown version")
  return None


def environment() -> list[tuple[str, str]]:
  """The ``(name, value)`` pairs that ``info`` prints."""
  import jax

  import jscorch

  rows = [("jscorch", jscorch.__version__)]
  rows += [(dist, _version(dist)) for dist in ("jax", "jaxlib", "numpy", "flax")]
  rows.append(("python", f"{platform.python_version()} ({sys.executable})"))
  rows.append(("platform", platform.platform()))
  rows.append(("backend", jax.default_backend()))
  rows.append(("devices", ", ".join(f"{d} ({d.device_kind})" for d in jax.devices())))
  cc = find_c_compiler()
  rows.append(("C compiler", f"{cc[0]}: {cc[1]}" if cc else "none"))
  rows.append(("config", repr(jscorch.config)))
  return rows


def print_environment() -> None:
  """Prints :func:`environment` as aligned ``name: value`` lines."""
  rows = environment()
  width = max(len(name) for name, _ in rows) + 1
  for name, value in rows:
    print(f"{name + ':':<{width}} {value}")


# -- info ----------------------------------------------------------------------------------
def _add_info(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("info", help="print versions, backend, devices, C compiler and config",
                     description="Print versions, the JAX backend and devices, the C "
                     "compiler ($CC, cc or gcc) and jscorch.config.")
  # Looked up at call time (not bound now), so tests can patch ``cmd_info``.
  p.set_defaults(run=lambda args: cmd_info(args))


def cmd_info(args: argparse.Namespace) -> int:
  """Runs ``info``."""
  del args
  print_environment()
  return 0


# -- demo ----------------------------------------------------------------------------------
def _add_demo(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("demo", help="a small worked example (the default)",
                     description="Print the environment, then build a random sparse matrix, "
                     "convert it between formats, jit a function of it and differentiate "
                     "with respect to its stored values.")
  p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
  p.set_defaults(run=lambda args: cmd_demo(args))


def _section(title: str) -> None:
  print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def _fmt(x) -> str:
  import numpy as np
  return np.array2string(np.asarray(x), precision=3, suppress_small=True, max_line_width=100)


def cmd_demo(args: argparse.Namespace) -> int:
  """Runs ``demo``: the environment, then formats, ``jit`` and ``js.grad`` on a small matrix."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  import jscorch as js

  _section("environment")
  print_environment()

  # Every step runs under jax.jit: a SparseArray is a pytree whose leaves are its
  # buffers and whose format and shape are static, and one compiled call is much
  # faster than op-by-op dispatch for these small arrays.
  _section("a random 6 x 8 CSR matrix, density 0.25 (built under jax.jit)")
  A = jax.jit(lambda key: js.random(key, (6, 8), 0.25, format="csr"))(
      jax.random.key(args.seed))
  todense = jax.jit(lambda A: A.todense())
  print(f"A        = {A!r}")
  print(f"A.format = {A.format!r}")
  print(f"A.data   = {_fmt(A.data)}")
  print(f"A.pos(1) = {_fmt(A.pos(1))}   (row offsets)")
  print(f"A.crd(1) = {_fmt(A.crd(1))}   (column of each entry)")
  dense = np.asarray(todense(A))
  print("A.todense() =")
  print(_fmt(dense))

  _section("the same matrix in other formats: A.asformat(name)")
  for name in ("coo", "csc", "dcsr"):
    B = jax.jit(lambda A, name=name: A.asformat(name))(A)
    same = bool(np.array_equal(np.asarray(todense(B)), dense))
    bufs = ", ".join(_fmt(b) for b in B.indices)
    print(f"{name:>4}: {B!r}  todense matches: {same}")
    print(f"      {B.format!r}; index buffers: {bufs}")
    if not same:
      print(f"error: the {name} conversion does not match A.todense()", file=sys.stderr)
      return 1

  _section("jit: the format is static metadata, the buffers are traced")
  x = jnp.arange(1, 9, dtype=jnp.float32)

  def loss(A, x):
    return jnp.sum((A.todense() @ x) ** 2)

  print("loss(A, x) = sum((A.todense() @ x) ** 2),  x = [1, 2, ..., 8]")
  print(f"jax.jit(loss)(A, x) = {float(jax.jit(loss)(A, x)):.4f}")
  print(f"dense reference     = {float(np.sum((dense @ np.asarray(x)) ** 2)):.4f}")

  _section("js.grad with respect to the stored values")
  g = jax.jit(js.grad(loss))(A, x)
  same_pattern = g.format == A.format and all(
      bool(np.array_equal(np.asarray(a), np.asarray(b))) for a, b in zip(g.indices, A.indices))
  print(f"g = js.grad(loss)(A, x) = {g!r}")
  print(f"g.data   = {_fmt(g.data)}")
  print(f"g.pos(1) = {_fmt(g.pos(1))}, g.crd(1) = {_fmt(g.crd(1))}")
  print(f"same pattern as A: {same_pattern}")
  print("pattern of g (x = stored entry, . = not stored; never densified):")
  stored = np.zeros(A.shape, bool)
  rows = np.repeat(np.arange(A.shape[0]), np.diff(np.asarray(g.pos(1))))
  stored[rows, np.asarray(g.crd(1))] = True
  for row in stored:
    print("  " + " ".join("x" if s else "." for s in row))
  if not same_pattern:
    print("error: the gradient lost A's pattern", file=sys.stderr)
    return 1
  print("\ncoming: sparse einsum, kernels, Flax layers.")
  return 0


# -- parser --------------------------------------------------------------------------------
_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_info, _add_demo)


def build_parser() -> argparse.ArgumentParser:
  """The argument parser, with one subparser per entry of ``_SUBCOMMANDS``."""
  import jscorch
  parser = argparse.ArgumentParser(
      prog="python -m jscorch",
      description="jscorch: sparse machine learning in JAX. Without a subcommand, runs "
      f"'{DEFAULT_COMMAND}'.")
  parser.add_argument("--version", action="version", version=f"jscorch {jscorch.__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  for add in _SUBCOMMANDS:
    add(sub)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of ``python -m jscorch`` and the ``jscorch`` script.

  Args:
    argv: the arguments (default: ``sys.argv[1:]``).

  Returns:
    The exit code.
  """
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command is None:
    args = parser.parse_args([DEFAULT_COMMAND])
  return int(args.run(args) or 0)
