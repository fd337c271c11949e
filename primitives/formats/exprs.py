"""Level expressions: the entries of a format's dimension-to-level map ``dim_to_lvl``.

``dim_to_lvl[k]`` says which coordinate level ``k`` stores, as MLIR's
``sparse_tensor`` ``dimToLvl``. Three expressions exist:

* :class:`Dim` ``(d)``: level ``k`` stores sparse dimension ``d`` itself; a map of
  ``Dim`` only is a permutation, equivalent to ``mode_ordering``;
* :class:`FloorDiv` ``(d, b)``: the block coordinate ``d // b`` (``Dim(d) // b``);
* :class:`Mod` ``(d, b)``: the offset ``d % b`` inside a block (``Dim(d) % b``).

A **blocked map** (BSR: ``(i // bm, j // bn, i % bm, j % bn)``, as MLIR writes
``(i, j) -> (i floordiv bm, j floordiv bn, i mod bm, j mod bn)``) has one
``FloorDiv`` per sparse dimension, in any order (the block grid's mode ordering),
then one ``Mod`` per dimension in dimension order with the same block sizes:
a block is stored row-major whatever the grid's order.

Example:
  >>> from jscorch.primitives.formats import Dim
  >>> Dim(1), mode_ordering_of(2, None, (Dim(1), Dim(0)))
  (Dim(1), (1, 0))
  >>> blocked_map((Dim(0) // 2, Dim(1) // 3, Dim(0) % 2, Dim(1) % 3))
  ((0, 1), (2, 3))
"""
from __future__ import annotations

import dataclasses
from typing import Sequence, Union

from .._errors import SparseFormatError


@dataclasses.dataclass(frozen=True)
class Dim:
  """The level stores sparse dimension ``dim`` unchanged; ``Dim(d) // b`` and ``Dim(d) % b``
  build the blocked expressions."""
  dim: int

  def __repr__(self):
    return f"Dim({self.dim})"

  def __floordiv__(self, block):
    return FloorDiv(self.dim, block)

  def __mod__(self, block):
    return Mod(self.dim, block)


@dataclasses.dataclass(frozen=True)
class FloorDiv:
  """The level stores the block coordinate ``dim // block`` of sparse dimension ``dim``."""
  dim: int
  block: int

  def __repr__(self):
    return f"Dim({self.dim}) // {self.block}"


@dataclasses.dataclass(frozen=True)
class Mod:
  """The level stores the offset ``dim % block`` of sparse dimension ``dim`` in its block."""
  dim: int
  block: int

  def __repr__(self):
    return f"Dim({self.dim}) % {self.block}"


LevelExpr = Union[Dim, FloorDiv, Mod]


def blocked_map(exprs: Sequence[LevelExpr]) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """``(mode_ordering, blocks)`` of a blocked map: the grid's permutation (from the
  ``FloorDiv`` half) and the block size of each sparse dimension.

  Raises:
    SparseFormatError: a map that is not ``n`` ``FloorDiv`` then ``n`` ``Mod`` of the
      same dimensions and block sizes, ``Mod`` in dimension order, blocks >= 1.
  """
  exprs = tuple(exprs)
  n = len(exprs) // 2
  grid, inner = exprs[:n], exprs[n:]
  order = tuple(getattr(e, "dim", -1) for e in grid)
  blocks = [0] * n
  for e in grid:
    if isinstance(e, FloorDiv) and 0 <= e.dim < n:
      blocks[e.dim] = e.block
  ok = (len(exprs) == 2 * n and n > 0 and all(isinstance(e, FloorDiv) for e in grid) and
        all(isinstance(e, Mod) for e in inner) and sorted(order) == list(range(n)) and
        tuple((e.dim, e.block) for e in inner) == tuple(enumerate(blocks)) and
        all(isinstance(b, int) and b >= 1 for b in blocks))
  if not ok:
    raise SparseFormatError(
        f"Format: a blocked dim_to_lvl must be one FloorDiv per sparse dimension (any order) "
        f"then one Mod per dimension in dimension order with the same block sizes >= 1; got "
        f"dim_to_lvl={exprs!r}, expected e.g. (Dim(0) // 2, Dim(1) // 3, Dim(0) % 2, "
        "Dim(1) % 3). Or use js.blocked(format, block).")
  return order, tuple(blocks)


def mode_ordering_of(n_levels: int, mode_ordering: Sequence[int] | None,
                     dim_to_lvl: Sequence[LevelExpr] | None) -> tuple[int, ...]:
  """The permutation ``mode_ordering`` given either it or a map of ``Dim`` (or neither);
  a blocked map is split by :func:`blocked_map` first.

  Raises:
    SparseFormatError: a map entry that is not a level expression, or a map that
      contradicts ``mode_ordering``.
  """
  order = None if mode_ordering is None else tuple(int(m) for m in mode_ordering)
  if dim_to_lvl is None:
    return tuple(range(n_levels)) if order is None else order
  exprs = tuple(dim_to_lvl)
  if not all(isinstance(e, Dim) for e in exprs):
    raise SparseFormatError(
        f"Format: dim_to_lvl entries must be level expressions; got dim_to_lvl={exprs!r}, "
        "expected Dim(d) for each level, or a blocked map of FloorDiv and Mod. Pass "
        "mode_ordering= for a permutation.")
  mapped = tuple(int(e.dim) for e in exprs)
  if order is not None and order != mapped:
    raise SparseFormatError(
        f"Format: dim_to_lvl and mode_ordering disagree; got dim_to_lvl={exprs!r}, "
        f"mode_ordering={order}, expected the same permutation. Pass only one of them.")
  return mapped
