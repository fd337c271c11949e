"""Errors, warnings and the densify policy of :func:`jscorch.sparsify`.

Every message names the primitive and the user's source line (from the jaxpr
equation's source info), and the remedy. The one private JAX import of the
package (``source_info_util``, which has no public home) is wrapped here.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from jscorch.array import is_sparse
from jscorch.primitives._errors import SparseEfficiencyWarning
from jscorch.primitives._errors import SparsifyError as SparsifyError

REMEDY = ("Pass densify=True to js.sparsify to densify it (with a SparseEfficiencyWarning), "
          "or pass this argument dense (A.todense())")


def _exclude_own_frames():
  """Frames of this package are not the user's: source lines skip them, as JAX's own."""
  import os  # noqa: PLC0415
  try:
    from jax._src import source_info_util  # noqa: PLC0415 (no public home)
    source_info_util.register_exclusion(os.path.dirname(os.path.abspath(__file__)) + os.sep)
  except Exception:   # pragma: no cover - private API moved: lines may name our frames
    pass


_exclude_own_frames()


def source_line(eqn) -> str:
  """``"file.py:12 (fn)"`` for a jaxpr equation: where the user's code emitted it."""
  if eqn is None:
    return "<unknown>"
  try:
    from jax._src import source_info_util  # noqa: PLC0415 (no public home)
    return source_info_util.summarize(eqn.source_info)
  except Exception:   # pragma: no cover - best effort, never hides the real error
    return "<unknown>"


class Site:
  """Where a primitive was emitted: the equation and the call equations around it.

  Equations inside library code (``jax.nn.relu``'s body) have no user frame; the
  nearest enclosing call equation that has one is reported instead.
  """
  __slots__ = ("eqn", "outer")

  def __init__(self, eqn, outer=()):
    self.eqn, self.outer = eqn, tuple(outer)

  def __str__(self):
    for e in (self.eqn, *reversed(self.outer)):
      line = source_line(e)
      if line and line != "<unknown>":
        return f"{self.eqn.primitive.name!r} at {line}"
    return f"{self.eqn.primitive.name!r}"


def eqn_context(eqn):
  """The context ``jax.core.eval_jaxpr`` binds an equation in (its source info and flags)."""
  import contextlib  # noqa: PLC0415
  try:
    from jax._src import source_info_util  # noqa: PLC0415 (no public home)
    stack = contextlib.ExitStack()
    stack.enter_context(source_info_util.user_context(
        eqn.source_info.traceback,
        name_stack=source_info_util.current_name_stack() + eqn.source_info.name_stack))
    stack.enter_context(eqn.ctx.manager)
    return stack
  except Exception:   # pragma: no cover - private API moved: bind without it
    return contextlib.nullcontext()


def describe(site) -> str:
  """``"'exp' at file.py:12 (fn)"`` for a :class:`Site` or a jaxpr equation."""
  if site is None:
    return "'?'"
  return str(site if isinstance(site, Site) else Site(site))


def _nbytes(shape, dtype) -> int:
  return int(math.prod(shape)) * np.dtype(dtype).itemsize


def _human(n: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n} B"   # pragma: no cover


class Policy:
  """What to do when a sparse operand must become dense: raise, or densify and warn once."""

  def __init__(self, densify: bool):
    self.densify = bool(densify)
    self.valid_cache = {}     # pattern -> valid-entry mask, shared within one evaluation

  def densify_operands(self, eqn, values, why: str) -> list:
    """Returns ``values`` with each SparseArray densified, or raises :class:`SparsifyError`.

    Args:
      eqn: the :class:`Site` (or jaxpr equation) that needs dense operands.
      values: operands (SparseArrays are densified, others pass through).
      why: the reason, completing "sparsify: <prim> at <line> <why>".
    """
    sparse = [v for v in values if is_sparse(v)]
    if not sparse:
      return list(values)
    where = describe(eqn)
    if not self.densify:
      shapes = ", ".join(f"{v!r}" for v in sparse)
      raise SparsifyError(
          f"sparsify: primitive {where} {why}; got sparse operand(s) {shapes}, expected "
          f"dense operands. {REMEDY}.")
    dense_bytes = sum(_nbytes(v.shape, v.dtype) for v in sparse)
    stored = sum(_nbytes(v.data.shape, v.dtype) + sum(_nbytes(i.shape, i.dtype)
                                                      for i in v.indices) for v in sparse)
    shapes = ", ".join(f"{jnp_name(v.dtype)}{list(v.shape)}" for v in sparse)
    warnings.warn(
        f"sparsify: primitive {where} {why}; densified {len(sparse)} sparse operand(s) "
        f"({shapes}): {_human(dense_bytes)} dense instead of {_human(stored)} stored.",
        SparseEfficiencyWarning, stacklevel=2)
    return [todense(v) if is_sparse(v) else v for v in values]


def todense(A):
  """``A.todense()``, also for bool values (summed as integers: duplicates are or-ed)."""
  if np.dtype(A.dtype) == np.dtype(bool):
    return A.astype(np.int32).todense() != 0
  return A.todense()


def jnp_name(dtype) -> str:
  return np.dtype(dtype).name
