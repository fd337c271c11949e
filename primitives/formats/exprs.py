"""Level expressions: the entries of a format's dimension-to-level map ``dim_to_lvl``.

``dim_to_lvl[k]`` says which coordinate level ``k`` stores. Today the only
expression is :class:`Dim` (level ``k`` stores sparse dimension ``d`` itself), so a
map is a permutation, equivalent to ``mode_ordering``. Blocked levels will add
``FloorDiv(d, b)`` and ``Mod(d, b)`` here (BSR: ``(Dim(0) // bm, Dim(1) // bn,
Dim(0) % bm, Dim(1) % bn)``), as MLIR ``sparse_tensor`` writes
``(i, j) -> (i floordiv bm, j floordiv bn, i mod bm, j mod bn)``.

Example:
  >>> from jscorch.primitives.formats import Dim
  >>> Dim(1), mode_ordering_of(2, None, (Dim(1), Dim(0)))
  (Dim(1), (1, 0))
"""
from __future__ import annotations

import dataclasses
from typing import Sequence, Union

from .._errors import SparseFormatError


@dataclasses.dataclass(frozen=True)
class Dim:
  """The level stores sparse dimension ``dim`` unchanged."""
  dim: int

  def __repr__(self):
    return f"Dim({self.dim})"


LevelExpr = Union[Dim]          # later: FloorDiv, Mod


def mode_ordering_of(n_levels: int, mode_ordering: Sequence[int] | None,
                     dim_to_lvl: Sequence[LevelExpr] | None) -> tuple[int, ...]:
  """The permutation ``mode_ordering`` given either it or a ``dim_to_lvl`` map (or neither).

  Raises:
    SparseFormatError: a map entry that is not a level expression this version
      supports, or a map that contradicts ``mode_ordering``.
  """
  order = None if mode_ordering is None else tuple(int(m) for m in mode_ordering)
  if dim_to_lvl is None:
    return tuple(range(n_levels)) if order is None else order
  exprs = tuple(dim_to_lvl)
  if not all(isinstance(e, Dim) for e in exprs):
    raise SparseFormatError(
        f"Format: dim_to_lvl entries must be level expressions; got dim_to_lvl={exprs!r}, "
        "expected Dim(d) for each level (blocked maps such as FloorDiv are not supported "
        "yet). Pass mode_ordering= for a permutation.")
  mapped = tuple(int(e.dim) for e in exprs)
  if order is not None and order != mapped:
    raise SparseFormatError(
        f"Format: dim_to_lvl and mode_ordering disagree; got dim_to_lvl={exprs!r}, "
        f"mode_ordering={order}, expected the same permutation. Pass only one of them.")
  return mapped
