"""The static plan of one structure computation (conversion or coalescing).

A :class:`StructurePlan` says everything the kernel and the portable rule need to
turn one batch element's coordinates (given directly, or read from the level
buffers of a source layout) into the level buffers of a destination layout, plus
the output slot of every source entry. It is frozen and hashable: it is the
primitive's only parameter, the kernel's cache key and part of its FFI name.

Example:
  >>> from jscorch.primitives.formats import CSR, CSC
  >>> from jscorch.primitives.layout import Layout
  >>> p = make_plan(Layout(CSC, (4, 5), 6), Layout(CSR, (4, 5), 6))
  >>> p.sort_levels, p.sums
  ((0,), False)
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..formats import Compressed, Dense, Singleton
from ..layout import Layout

DENSE_CODE, COMPRESSED_CODE, SINGLETON_CODE = 0, 1, 2
_CODED_LEVELS = (Dense, Compressed, Singleton)    # the level types with a code (others: portable)


def level_codes(lay: Layout) -> tuple[int, ...]:
  """One small int per level: dense 0, compressed 1, singleton 2 (from the level's
  buffers, so no level-kind comparison is needed here)."""
  return tuple(COMPRESSED_CODE if lvl.has_pos else SINGLETON_CODE if lvl.has_crd else DENSE_CODE
               for lvl in lay.format.levels)


@dataclasses.dataclass(frozen=True)
class StructurePlan:
  """One structure computation on a single batch element (see module docstring).

  Attributes:
    dst: the destination layout of one batch element (``n_batch=0``).
    src: the source layout of one batch element, or None when the input is a
      coordinate list `[n, n_sparse]` in ``dst``'s storage order.
    n: entries per batch element of the input (``src.nse`` or the coordinate count).
    sort_levels: the destination levels to sort by, least significant first (a
      stable counting sort per level); empty when the input is already in order.
    sums: entries with equal coordinates are merged (their slots coincide).
  """
  dst: Layout
  src: Layout | None
  n: int
  sort_levels: tuple[int, ...]
  sums: bool
  passthrough: bool = False

  @property
  def entry_level(self) -> int:
    """The destination level whose positions are the entries (the last level that is
    not a singleton)."""
    return entry_level(self.dst)

  @property
  def computed_levels(self) -> tuple[int, ...]:
    """Passthrough only: the destination levels at or below :attr:`entry_level` whose
    ``crd`` the kernel writes; the others reuse the source's per-entry ``crd``."""
    e_src = entry_level(self.src)
    return tuple(k for k in range(self.entry_level, self.n_levels)
                 if self.dst_to_src[k] < e_src)

  @property
  def reused_levels(self) -> dict[int, int]:
    """Passthrough only: destination level -> the source level whose ``crd`` it is."""
    return {k: self.dst_to_src[k] for k in range(self.entry_level, self.n_levels)
            if k not in self.computed_levels}

  @property
  def n_levels(self) -> int:
    return len(self.dst.format.levels)

  @property
  def dst_to_src(self) -> tuple[int, ...]:
    """For each destination level, the source level holding the same dimension."""
    if self.src is None:
      return tuple(range(self.n_levels))
    src_level_of_dim = self.src.format.levels_of_dims
    return tuple(src_level_of_dim[d] for d in self.dst.format.mode_ordering)

  @property
  def src_to_dst(self) -> tuple[int, ...]:
    inv = [0] * self.n_levels
    for k, j in enumerate(self.dst_to_src):
      inv[j] = k
    return tuple(inv)

  def index_shapes(self, lay: Layout) -> tuple[tuple[int, ...], ...]:
    """Shapes of one batch element's index buffers of ``lay``, in leaf order."""
    return tuple(shape for _, _, shape in lay.index_shapes)


def supports(dst: Layout, src: Layout | None = None) -> bool:
  """Whether the structure primitive covers ``dst`` (and ``src``): at least one sparse
  level that stores coordinates, and for conversions the same shape and batch/block split."""
  def ok(lay):
    return lay.n_sparse >= 1 and not lay.format.all_dense and \
        all(type(lvl) in _CODED_LEVELS for lvl in lay.format.levels)
  if not ok(dst):
    return False
  if src is None:
    return True
  return ok(src) and src.shape == dst.shape and \
      (src.n_batch, src.n_dense) == (dst.n_batch, dst.n_dense)


def element(lay: Layout) -> Layout:
  """The layout of one batch element."""
  return Layout(lay.format.replace(n_batch=0), lay.shape[lay.n_batch:], lay.nse)


def make_plan(dst: Layout, src: Layout | None = None, *, n: int | None = None,
              is_sorted: bool = False, is_unique: bool = False) -> StructurePlan:
  """The plan turning ``src``'s buffers (or ``n`` coordinates) into ``dst``'s buffers.

  Args:
    dst: the destination layout (batch dimensions are dropped from the plan).
    src: the source layout, or None for a coordinate-list input.
    n: the number of input coordinates (coordinate input only).
    is_sorted: the coordinate input is in ``dst``'s lexicographic storage order.
    is_unique: the input has no repeated coordinates.
  """
  dst = element(dst)
  n_levels = len(dst.format.levels)
  lsd = tuple(range(n_levels - 1, -1, -1))
  if src is None:
    assert n is not None
    skip = n_levels if is_sorted else 0
  else:
    src = element(src)
    n = src.nse
    is_unique = src.format.unique
    skip = 0
    if src.format.ordered:
      # A source sorted by its levels (s_0, ..., s_L-1) has already had the stable passes
      # of a least-significant-first sort by s_L-1, ..., s_0: skip the first passes of
      # dst's sort that these cover (all of them when the level orders agree).
      s = [0] * n_levels
      src_level_of_dim = src.format.levels_of_dims
      for k, d in enumerate(dst.format.mode_ordering):
        s[src_level_of_dim[d]] = k
      for j in range(n_levels, 0, -1):
        if tuple(s[:j]) == tuple(range(n_levels - j, n_levels)):
          skip = j
          break
  sort_levels, sums = lsd[skip:], bool(dst.format.unique and not is_unique)
  passthrough = src is not None and _passthrough(dst, src, sort_levels, sums)
  return StructurePlan(dst, src, int(n), sort_levels, sums, passthrough)


def entry_level(lay: Layout) -> int:
  """The last level of ``lay`` that is not a singleton (its positions are the entries)."""
  levels = lay.format.levels
  k = len(levels) - 1
  while k > 0 and levels[k].has_crd and not levels[k].has_pos:
    k -= 1
  return k


def _passthrough(dst: Layout, src: Layout, sort_levels, sums: bool) -> bool:
  """Whether the conversion keeps every stored entry in its slot: the source is already
  in the destination's storage order, nothing merges, and both layouts store one entry
  per position of a compressed level (dense levels above it, singletons below), with
  the same capacity. Then the values and every per-entry ``crd`` the source has are
  the output's, and only the rest is computed (``pos`` by a histogram)."""
  if sort_levels or sums or src.nse != dst.nse:
    return False
  levels, e = dst.format.levels, entry_level(dst)
  if not (levels[e].has_pos and all(not lvl.has_crd for lvl in levels[:e])):
    return False
  if levels[e].unique and not (e == len(levels) - 1 and src.format.unique):
    return False                      # (a unique level with singletons below could merge)
  return src.format.levels[entry_level(src)].has_pos and dst.capacities[e] == dst.nse


def np_dtype_name(dtype) -> str:
  return {np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t"}[np.dtype(dtype)]
