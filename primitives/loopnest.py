"""The loop-nest IR: what a planned einsum kernel does, as frozen, hashable dataclasses.

The planner (:mod:`.plan`) writes *all* of its decisions into a :class:`Kernel`:
which loop runs in parallel and how its work is balanced, whether the output is
stored or accumulated (the race strategy), which index is vectorised, where each
partial product is hoisted, how many accumulator sets a short reduction interleaves,
and whether a transposed workspace is built first. A
backend only prints it (``backends/c/printer.py``): it decides nothing.

Nodes, outermost first:

* :class:`Kernel` — buffers, prologue (workspaces), the unit loop, vector index,
  work balance, and optionally a :class:`Stage` (the body run tile by tile over dense
  arrays copied so that the vector index is contiguous); its :attr:`Kernel.name` (the
  FFI target) derives from its hash;
* :class:`Loop` over an iterator — :class:`Units` (batch elements x first-level
  coordinates: the outer loop), :class:`Range` (a dense level, or a free index when
  ``src`` is None), :class:`Segment` (``pos[p] .. pos[p+1]`` of a compressed level),
  :class:`Single` (one ``crd`` per parent: a singleton level), :class:`Intersect`
  (co-iteration of several structures' levels), :class:`TupleIntersect` (a
  lexicographic merge of ordered COO structures over whole coordinate tuples;
  :class:`Union` is reserved for sparse additions and not printed yet);
* statements — :class:`Let` (a named scalar), :class:`Locate` (a position found
  from bound coordinates), :class:`Zero` (an accumulator, one
  register per vector lane), :class:`Accumulate` (into an accumulator or the
  output, with a :class:`Race`), :class:`SkipUnless` (repeated indices),
  :class:`Prefetch`, :class:`Transpose` (a counting-sort workspace);
* expressions — :class:`Coord`, :class:`Pos`, :class:`Var`, :class:`Load` with an
  :class:`Affine` offset, :class:`Mul`, :class:`Add`, :class:`Const`, :class:`Acc`.

Example:
  >>> loop = Loop(Range(Coord("f2"), 4), Parallel.NONE, (Zero("s"),))
  >>> loop.over.size, loop.parallel is Parallel.NONE, hash(loop) == hash(loop)
  (4, True, True)
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import typing
from typing import Iterator as _Iter

_Either = typing.Union

_frozen = dataclasses.dataclass(frozen=True)


class Parallel(enum.Enum):
  """How a loop's iterations run (cf. TACO's ``ParallelUnit``)."""
  NONE = 0        # serially, in order
  OUTER = 1       # in chunks on threads: distinct iterations write distinct outputs
  VECTOR = 2      # across SIMD lanes


class Race(enum.Enum):
  """How a write to the output is made (cf. TACO's ``OutputRaceStrategy``)."""
  STORE = 0       # each location is written once, by its owner: plain store, no zeroing
  ACCUMULATE = 1  # ``+=`` into a zeroed output


class Role(enum.Enum):
  """What a kernel buffer holds."""
  VALUES = 0
  POS = 1
  CRD = 2
  OUT = 3


# -- expressions ---------------------------------------------------------------------------
@_frozen
class Const:
  value: int


@_frozen
class Var:
  """A named scalar (the batch element ``b``, a ``Let``, the prefetch look-ahead)."""
  name: str


@_frozen
class Coord:
  """The coordinate bound by an iterator (or a batch dimension)."""
  name: str


@_frozen
class Pos:
  """Position of structure ``src`` at ``level`` (bound by that level's iterator)."""
  src: int
  level: int


@_frozen
class Acc:
  """An accumulator declared by :class:`Zero` (lane-wise in a vector kernel)."""
  name: str


@_frozen
class Affine:
  """``sum(expr * coeff)`` over ``terms``; a coordinate of the vector index reads as 0
  (the printer adds the lane offset)."""
  terms: tuple[tuple["Expr", int], ...]


@_frozen
class Load:
  """``buffer[offset]``; ``lanes``: the load varies along the vector index."""
  buffer: str
  offset: _Either[Affine, "Expr"]
  lanes: bool = False


@_frozen
class Mul:
  factors: tuple["Expr", ...]


@_frozen
class Add:
  terms: tuple["Expr", ...]


Expr = _Either[Const, Var, Coord, Pos, Acc, Affine, Load, Mul, Add]


# -- iterators -----------------------------------------------------------------------------
@_frozen
class Units:
  """The outer loop: ``batch`` elements x ``width`` coordinates of the first level.

  Binds ``b`` (the batch element), ``q`` (the first-level unit) and ``batch`` coords.
  """
  batch: tuple[int, ...]
  width: int
  coords: tuple[Coord, ...]

  @property
  def size(self) -> int:
    n = self.width
    for s in self.batch:
      n *= s
    return n


@_frozen
class Range:
  """A dense level of structures ``srcs`` (positions ``parent * size + c``), or with
  ``srcs == ()`` a free index. ``unit``: the coordinate is the outer loop's unit."""
  coord: Coord
  size: int
  level: int = -1
  srcs: tuple[int, ...] = ()
  unit: bool = False


@_frozen
class Segment:
  """``pos[parent] .. pos[parent + 1]`` of a compressed level, reading ``crd``.

  Bounds are clamped to ``cap`` and coordinates ``>= size`` (padding) skipped.
  """
  coord: Coord
  src: int
  level: int
  size: int
  cap: int
  parent_cap: int
  pos: str
  crd: str
  unit: bool = False


@_frozen
class Single:
  """One ``crd`` per parent position (a singleton level)."""
  coord: Coord
  src: int
  level: int
  size: int
  cap: int
  crd: str


@_frozen
class Intersect:
  """Co-iteration of the same level of several structures: only coordinates present in
  all ``parts`` are visited (a merge of sorted segments)."""
  coord: Coord
  parts: tuple[Segment, ...]


@_frozen
class TupleIntersect:
  """Co-iteration of several *ordered* COO structures over whole coordinate tuples.

  ``parts[s]`` are structure ``s``'s level iterators (a root :class:`Segment`, then
  :class:`Single` levels sharing its positions), ``coords`` the coordinates they bind.
  A lexicographic merge: each structure's pointer advances while its tuple is below the
  largest current tuple; where all agree, the runs of equal tuples are found and every
  combination of one entry per structure is visited (duplicates each contribute, as in
  the portable join), binding ``Pos(s, last level)``. Tuples with a coordinate out of
  range (padding) are skipped.
  """
  coords: tuple[Coord, ...]
  parts: tuple[tuple[_Either[Segment, Single], ...], ...]


@_frozen
class Union:
  """Co-iteration visiting coordinates present in any part, in increasing order (TACO's
  merge lattice: sparse additions, concatenation). Each visit binds ``coord`` to the
  smallest head coordinate; the parts whose head equals it store the coordinate at
  their head (what :class:`Link` and :class:`Fold` read) and advance. Parts are
  :class:`RowSegment` s (structure kernels, below)."""
  coord: Coord
  parts: tuple["RowSegment", ...]


Iterator = _Either[Units, Range, Segment, Single, Intersect, TupleIntersect, Union]


# -- statements ----------------------------------------------------------------------------
@_frozen
class Loop:
  """``body`` for each coordinate of ``over``.

  ``interleave`` > 1 (a reduction over a :class:`Segment` into accumulators only):
  consecutive entries alternate between that many sets of the accumulators, summed
  after the loop, so that the adds of a short row form independent chains instead of
  one that waits on each add's latency. It fixes the order of the sum (so results stay
  deterministic); a backend whose loops do not run one entry at a time ignores it.
  """
  over: Iterator
  parallel: Parallel
  body: tuple["Stmt", ...]
  interleave: int = 1


@_frozen
class Let:
  """``name = value`` (an index-valued scalar)."""
  name: str
  value: Expr


@_frozen
class Zero:
  """Declares accumulator ``name`` = 0 (one register per lane in a vector kernel)."""
  name: str


@_frozen
class Access:
  """The output element at ``offset`` (lane 0 of the vector index)."""
  buffer: str
  offset: _Either[Affine, Expr]


@_frozen
class Accumulate:
  """``out (=|+=) value``: into an :class:`Acc` (a register: ``race`` is ACCUMULATE)
  or the output :class:`Access` (``race`` says store or accumulate)."""
  out: _Either[Acc, Access]
  value: Expr
  race: Race


@_frozen
class Locate:
  """Binds ``Pos(src, level)`` to ``value``: a level of a joined structure whose coordinate
  is already bound is located (``Level.locate``), not iterated."""
  src: int
  level: int
  value: Expr


@_frozen
class SkipUnless:
  """Skip the rest of the iteration unless ``a == b`` (a repeated index)."""
  a: Expr
  b: Expr


@_frozen
class Prefetch:
  """Prefetch ``targets`` (offsets in terms of ``Var("ahead")``, the coordinate
  ``distance`` entries ahead in ``segment``)."""
  segment: Segment
  distance: int
  targets: tuple[tuple[str, Affine], ...]


@_frozen
class Transpose:
  """Prologue workspace: structure ``src``'s (dense, compressed) levels re-sorted
  column-major by a counting sort, with a permutation ``perm`` to the stored values."""
  src: int
  rows: int
  cols: int
  nse: int
  pos: str
  crd: str


Stmt = _Either[Loop, Let, Locate, Zero, Accumulate, SkipUnless, Prefetch, Transpose]


# -- the kernel ----------------------------------------------------------------------------
@_frozen
class Buffer:
  """A kernel argument: ``name``, what it holds, and its flat input position (``arg``)
  or, for an output, its number of elements (``size``)."""
  name: str
  role: Role
  arg: int = -1
  size: int = 0


@_frozen
class Vector:
  """The vector index: ``size`` elements in lanes of ``width`` (a scalar tail after).
  ``coord`` is None when no index is free (one scalar lane)."""
  coord: Coord | None
  size: int
  width: int


@_frozen
class Balance:
  """Work balance of the outer loop: stored entries before each unit, found by
  descending ``levels`` (the iterators below the first) from the unit; the loop is
  split into chunks only when ``split``."""
  units: int
  width: int
  batch: int
  nse: int
  levels: tuple[Iterator, ...]
  split: bool


@_frozen
class Staged:
  """One dense array whose vector index is not its contiguous axis, viewed `[outer, extent,
  inner]` (the vector index in the middle): a tile of ``tile`` vector positions is copied
  to (or, for the output, from) a contiguous scratch `[outer, inner, tile]`."""
  buffer: str
  outer: int
  inner: int


@_frozen
class Stage:
  """Tiles of the vector index staged through scratch (the kernel body is planned with
  the vector index's size set to ``tile``): for each tile of ``extent``, in parallel
  across tiles, the ``inputs`` are copied in with the vector index last, the body runs
  over all units, and ``output`` is copied out; an output without the vector index
  (``output`` None) is summed over the tiles instead (per chunk of tiles, then across
  chunks). The transposes of an oriented einsum (:mod:`..orient`), done tile by tile in
  cache inside one kernel."""
  extent: int
  tile: int
  inputs: tuple[Staged, ...]
  output: Staged | None
  split: bool


@_frozen
class Kernel:
  """One planned kernel (static, hashable): a printer's whole input.

  Attributes:
    inputs / outputs: the buffers.
    prologue: workspaces built before the loops (:class:`Transpose`).
    body: the outer :class:`Loop` over :class:`Units`.
    vector: the vectorised index, or None (a scalar kernel).
    balance: how the outer loop is chunked.
    dtype / index_dtype: ``"float32"``/``"float64"`` and ``"int32"``/``"int64"``.
    notes: ``(key, text)`` lines for the printed header (the expression, formats).
    stage: the body runs tile by tile over staged dense arrays (:class:`Stage`), or None.
  """
  inputs: tuple[Buffer, ...]
  outputs: tuple[Buffer, ...]
  prologue: tuple[Stmt, ...]
  body: Loop
  vector: Vector | None
  balance: Balance
  dtype: str
  index_dtype: str
  notes: tuple[tuple[str, str], ...] = ()
  stage: Stage | None = None

  @property
  def name(self) -> str:
    """The FFI target name, from the kernel's hash (equal kernels share one build)."""
    digest = hashlib.sha256(repr(self).encode()).hexdigest()[:16]
    return f"jscorch_k_{digest}"

  @property
  def vector_index(self) -> str | None:
    return self.vector.coord.name if self.vector and self.vector.coord else None

  @property
  def race(self) -> Race:
    """ACCUMULATE when any output write accumulates (the output is zeroed first)."""
    races = {s.race for s in walk(self.body)
             if isinstance(s, Accumulate) and isinstance(s.out, Access)}
    return Race.ACCUMULATE if Race.ACCUMULATE in races or not races else Race.STORE


def buffer_name(role: str, src: int, level: int) -> str:
  """The kernel argument holding index buffer ``role`` of structure ``src`` at ``level``."""
  return f"{role}{level}{'_%d' % src if src else ''}"


def walk(stmt) -> _Iter:
  """Every statement in ``stmt`` (pre-order)."""
  yield stmt
  if isinstance(stmt, Loop):
    for s in stmt.body:
      yield from walk(s)


def loops(stmt) -> list[Loop]:
  """The loops of ``stmt``, outermost first (pre-order)."""
  return [s for s in walk(stmt) if isinstance(s, Loop)]


# -- structure kernels: unions assembled row by row, sizes read at run time -----------------
# A structure kernel (:class:`Assembly`) computes index buffers, not values: every size is
# a :class:`Var` read when it runs (one build serves every shape), its loops run once per
# batch element, and its statements assemble the output level (append a coordinate, link
# the parts' entries to its leaves, finalize ``pos``) -- TACO's assembly, as IR.
@_frozen
class Size:
  """Run-time size ``name``: the last dimension of buffer ``buffer`` plus ``add`` or, with
  ``buffer`` None, element ``param`` of the int64 params operand (never negative)."""
  name: str
  buffer: str | None = None
  add: int = 0
  param: int = -1


@_frozen
class Array:
  """A structure kernel's argument (``arg``) or result (``ret``): element type ``dtype``
  (``"index"``, ``"count"``, ``"value"`` or ``"int64"`` scratch) and ``per_batch``
  elements per batch element (checked against the buffer when the kernel runs)."""
  name: str
  dtype: str
  per_batch: Expr
  arg: int = -1
  ret: int = -1


@_frozen
class RowSegment:
  """Row ``r - row_off`` of part ``src``, a (dense | compressed, compressed) structure of
  ``rows`` rows: positions ``pos[row] .. pos[row + 1]`` clamped to ``[0, cap]`` (empty for
  a row outside the part), coordinates ``crd[p] + col_off``. Out-of-range coordinates
  (``< 0`` or ``>= cols``, padding) at either end of the segment are trimmed."""
  src: int
  pos: str
  crd: str
  rows: Var
  cols: Var
  cap: Var
  row_off: Var
  col_off: Var


@_frozen
class Rows:
  """Rows ``0 .. size`` of the output. A ``Parallel.OUTER`` loop over them runs in chunks
  balanced by the entries of ``parts`` before each row, split only from ``split_at``
  entries in all."""
  coord: Coord
  size: Var
  parts: tuple[RowSegment, ...]
  split_at: int


@_frozen
class Count:
  """``out[at] =`` the number of visits of the enclosing :class:`Union` (a row's size).
  With two parts and at most ``bitmap`` columns (``cols``, the union's coordinate
  range) it may be counted as ``|A| + |B| - |A & B|`` by a bitmap of part 0 (the same
  number on sorted rows)."""
  out: str
  at: Expr
  cols: Var
  bitmap: int = 0


@_frozen
class Append:
  """The union's coordinate becomes leaf ``start + n`` of the output level (``n``: visits
  so far), written to ``crd`` only below the capacity ``cap``."""
  crd: str
  start: Expr
  cap: Var


@_frozen
class Link:
  """Part ``src`` and the current leaf: ``dest[at + p] = leaf`` where the part stores the
  coordinate (``none``, the output capacity, for its entries the union trims), and
  ``source[leaf] = p`` or ``cap`` (the part's capacity) where it stores none (below the
  output capacity)."""
  src: int
  dest: str | None
  at: Expr
  none: Var
  source: str | None
  cap: Var


@_frozen
class Fold:
  """Part ``src``'s values summed into the current leaf, ``block`` per entry: ``out[leaf]
  = v`` for the ``first`` part, else ``out[leaf] + v``; ``v = values[p]`` where the part
  stores the coordinate, else 0 (so ``-0.0`` sums as XLA's gathers do). ``cap``: the
  part's capacity (its entries are ``values[:cap]``)."""
  src: int
  values: str
  out: str
  block: Var
  first: bool
  cap: Var


@_frozen
class PrefixSum:
  """``buffer[0] = 0``, then ``buffer[r + 1] += buffer[r]`` for ``r < size``."""
  buffer: str
  size: Var


@_frozen
class Unreached:
  """``dest[at + p] = none`` for the positions of ``part`` outside all its rows (before
  ``pos[0]``, from ``pos[rows]``): entries of no row go nowhere."""
  part: RowSegment
  dest: str
  at: Expr
  none: Var


@_frozen
class Finalize:
  """The output level, assembled: ``pos[r] = min(start[r], cap)`` for ``r <= rows``,
  ``count = start[rows]``, and leaves ``start[rows] .. cap`` are padding: ``crd = pad``
  and the ``leaves`` statements (:class:`Link`, :class:`Fold`) see no part storing them."""
  pos: str
  crd: str
  start: str
  rows: Var
  cap: Var
  pad: Var
  count: str
  leaves: tuple[_Either[Link, Fold], ...]


@_frozen
class Assembly:
  """A structure kernel (static, hashable): a printer's whole input.

  Attributes:
    inputs / outputs / scratch: the buffers (scratch is int64, allocated once).
    sizes: the run-time sizes, in order; ``batch`` elements (the leading dimensions of
      output ``batch``) each run ``body``.
    body: statements: :class:`Unreached`, :class:`Loop` over :class:`Rows`,
      :class:`PrefixSum`, :class:`Finalize`.
    index_dtype / count_dtype / value_dtype: element types (``value_dtype`` None: none).
    notes: ``(key, text)`` lines for the printed header.
    source_dtype / entry_dtype: a conversion's source index type (arrays ``"source"``)
      and entry numbers' type (arrays ``"entry"``), else None.
  """
  inputs: tuple[Array, ...]
  outputs: tuple[Array, ...]
  scratch: tuple[Array, ...]
  sizes: tuple[Size, ...]
  batch: str
  body: tuple
  index_dtype: str
  count_dtype: str
  value_dtype: str | None
  notes: tuple[tuple[str, str], ...] = ()
  source_dtype: str | None = None
  entry_dtype: str | None = None

  @property
  def name(self) -> str:
    """The FFI target name, from the kernel's hash (every shape shares one build)."""
    digest = hashlib.sha256(repr(self).encode()).hexdigest()[:16]
    return f"jscorch_s_{digest}"


# -- conversions: a source walked, sorted and assembled level by level ----------------------
# A conversion kernel (an :class:`Assembly` with constant sizes: one build per plan) turns
# one batch element's entries -- a coordinate list, or the leaves of a source structure --
# into a destination structure: a walk over the source (:class:`Entries`) tallies,
# scatters or gathers them; :class:`SortBuckets` / :class:`RadixSort` order the gathered
# rows; :class:`Emit` appends each row to every destination level, merging duplicates.
@_frozen
class Level:
  """One level of a conversion's source or destination, told apart by its buffers (None
  where it has none): ``pos`` and ``crd`` (segments of coordinates), ``crd`` alone (one
  position per parent, :attr:`branchless`) or neither (every coordinate, :attr:`full`);
  coordinate range ``size``, capacity ``cap``, parent capacity ``pcap`` and uniqueness."""
  pos: str | None
  crd: str | None
  size: int
  cap: int
  pcap: int
  unique: bool = False

  @property
  def full(self) -> bool:
    return self.pos is None and self.crd is None

  @property
  def branchless(self) -> bool:
    return self.pos is None and self.crd is not None


@_frozen
class Entries:
  """The source's entries in its storage order, each binding ``e`` (the entry), ``row``
  (its coordinates in destination level order: source level ``rows[k]``'s for level
  ``k``) and ``ok`` (every coordinate in range).

  A coordinate list ``coords`` `[n, len(rows)]` (``levels`` empty, ``sizes`` the ranges),
  or a walk of the source ``levels``: a dense level's ``size`` positions per parent, a
  compressed level's ``pos[p] .. pos[p + 1]`` clamped to ``[0, cap]``, a singleton's one
  position per parent below ``cap``; a leaf no parent position reaches is padding and
  never visited. With ``runs >= 0`` (a source level) the walk stops at that level and
  binds runs ``[rlo, rhi)`` of entries sharing the coordinates above it (``row[k]`` of a
  level at or below it reads 0). A ``Parallel.OUTER`` loop runs in chunks of the
  outermost positions from ``split_at`` entries (on one batch element only).
  """
  coords: str | None
  levels: tuple[Level, ...]
  rows: tuple[int, ...]
  sizes: tuple[int, ...]
  n: int
  runs: int = -1
  split_at: int = 1 << 15


@_frozen
class SortedRows:
  """The first ``count[0]`` gathered rows in sorted order: ``entries[i]`` is the entry,
  its coordinates ``rows[i * L + k]`` (``by_entry``: ``rows[entries[i] * L + k]``)."""
  rows: str
  entries: str
  count: str
  width: int
  by_entry: bool


@_frozen
class Tally:
  """``hist[row[level] + 1] += 1`` for an entry in range (a counting sort's histogram)."""
  hist: str
  level: int


@_frozen
class Scatter:
  """A counting sort's scatter by ``row[level]`` (entries in range): ``slot =
  next[row[level]]++``; ``crd[slot] = row[crd_level]`` below ``cap``, ``source[slot] = e``
  below ``nse``."""
  next: str
  level: int
  crd: str
  crd_level: int
  cap: int
  source: str
  nse: int


@_frozen
class Bucket:
  """Entries in range scattered into the buckets of ``row[level]``: ``slot =
  next[row[level]]++``; below ``n``, ``entries[slot] = e`` and ``rows[slot * L + k] =
  row[k]``; ``count[0]``: the entries placed (``next`` of the last bucket, at most n)."""
  next: str
  level: int
  rows: str
  entries: str
  count: str
  buckets: int
  width: int
  n: int


@_frozen
class Gather:
  """Entries in range gathered in walk order: ``rows[e * L + k] = row[k]``,
  ``entries[count[0]++] = e`` (below ``n``)."""
  rows: str
  entries: str
  count: str
  width: int
  n: int


@_frozen
class SortBuckets:
  """Each bucket ``next[v - 1] .. next[v]`` of :class:`Bucket`'s rows (clamped to
  ``count[0]``) stably sorted by ``keys`` (destination levels, least significant first),
  rows travelling with their entries. Printed as insertion sort for short buckets, else a
  merge sort of local indices."""
  rows: str
  entries: str
  next: str
  count: str
  buckets: int
  keys: tuple[int, ...]
  width: int


@_frozen
class RadixSort:
  """``entries[:count[0]]`` stably sorted by ``rows[e * L + k]`` for each ``k`` of
  ``keys`` in turn (least significant first; ``sizes``: each key's range). Printed as one
  counting pass per key, or 16-bit radix digits where a key's range exceeds ``hist_cap``."""
  rows: str
  entries: str
  count: str
  keys: tuple[int, ...]
  sizes: tuple[int, ...]
  width: int
  hist_cap: int


@_frozen
class Builder:
  """The destination assembled entry by entry: ``levels`` (dense, compressed, singleton),
  ``map`` (``sums``: ``dest [n]``, each entry's slot, ``nse`` for none; else ``source
  [nse]``, each slot's entry, ``n`` for none) and ``count``."""
  levels: tuple[Level, ...]
  map: str
  count: str
  nse: int
  n: int
  sums: bool


@_frozen
class Begin:
  """Clears ``builder``: ``pos`` zero, a singleton's ``crd`` its size, ``source`` ``n``."""
  builder: Builder


@_frozen
class Emit:
  """Appends the current entry (in destination order) to every level of ``builder``: a
  compressed level starts a child where it is not unique or the coordinate or parent
  changed, counting it in ``pos[parent + 1]`` (below ``pcap``) and writing ``crd``
  (below ``cap``); with ``sums`` a row equal to the previous one only links its entry to
  the previous slot."""
  builder: Builder


@_frozen
class Seal:
  """Finishes ``builder``: ``pos`` prefix-summed (clamped to ``cap``), ``crd`` past the
  children padded with the level size, unlinked entries' ``dest`` ``nse``, and ``count``
  the children of the last compressed level (else the rows emitted)."""
  builder: Builder


@_frozen
class Offsets:
  """``run = 0``; for ``v < size``: ``next[v] = run`` (when ``next``), ``run +=
  counts[v + shift]``, ``pos[v + 1] = min(run, cap)``; ``pos[0] = 0``."""
  counts: str
  shift: int
  pos: str
  next: str | None
  size: int
  cap: int


@_frozen
class Tail:
  """``crd[q] = pad`` for ``q`` from ``start`` to ``cap``; ``count[0] = start``."""
  crd: str
  start: Expr
  cap: int
  pad: int
  count: str


@_frozen
class Histogram:
  """Entries counted per parent of the destination's entry level: ``node`` = the
  coordinates ``row[:levels]`` in mixed radix (``sizes``), ``hist[node] += 1`` (a run:
  its length) when all are in range (``levels`` 0: every entry, into ``hist[0]``)."""
  hist: str
  levels: int
  sizes: tuple[int, ...]


@_frozen
class Copy:
  """Each visited entry ``e < nse`` (each run, clipped at ``nse``) writes ``crd[e] =
  row[k]`` (``size`` where out of range) for every ``(crd, k, size)`` of ``outs``; the
  entries no walk visits are padded by :class:`Pad`."""
  outs: tuple[tuple[str, int, int], ...]
  nse: int


@_frozen
class Pad:
  """``crd[q] = size`` for every ``(crd, k, size)`` of ``copy.outs`` at each ``q < nse``
  that ``copy`` did not write."""
  copy: Copy
