"""Sparse tensor formats: levels, the dimension-to-level map, batch and block dimensions.

A :class:`Format` is static metadata (frozen, hashable) that says how each
dimension of a tensor is stored. The dimensions of a tensor split, in order, into

* ``n_batch`` leading **batch** dimensions: each batch element has its own pattern
  with the same capacity (what ``vmap`` over a sparse array produces);
* the **sparse** dimensions, stored as one *level* each, in storage order given by
  the **dimension-to-level map** ``dim_to_lvl`` (below);
* ``n_dense`` trailing **block** dimensions: each stored entry holds a dense block.

Level types (TACO / MLIR ``sparse_tensor``; one class per type in
``formats/{dense,compressed,singleton}.py``, see :mod:`.level` for the protocol):

* ``dense``: every coordinate is present, no buffers;
* ``compressed``: a ``pos`` buffer (segment offsets per parent position) and a
  ``crd`` buffer (coordinates);
* ``singleton``: a ``crd`` buffer only, one coordinate per parent position (COO).

**The dimension-to-level map.** ``dim_to_lvl[k]`` is a level expression saying
which coordinate level ``k`` stores, as MLIR's ``dimToLvl`` does. Today every
expression is ``Dim(d)`` (level ``k`` stores sparse dimension ``d``), so the map is
a permutation and ``mode_ordering[k] == dim_to_lvl[k].dim``; ``mode_ordering`` is
the constructor argument and property everything uses. The map leaves room for
``FloorDiv(d, b)`` / ``Mod(d, b)`` (a blocked level, as in BSR:
``(i // bm, j // bn, i % bm, j % bn)``) without another rewrite.

**Dense levels below the last sparse level** (Scorch's ``sd``, ``sdd``, ``ssdd``:
sparse rows of dense vectors, as in embedding tables) are stored as a dense block
under each entry of the last sparse level: ``Format(compressed, dense)`` of a
`[n, m]` array keeps `data` `[nse, m]`, where ``nse`` counts the stored *rows*.
Such a format keeps its spelling (``repr``, equality, ``spelled_levels``) while
its storage attributes (``levels``, ``mode_ordering``, ``n_dense``) describe the
equivalent block layout, which every converter and kernel understands:
``Format(compressed, dense).levels == (compressed,)``, ``.n_dense == 1`` and
``.n_block_levels == 1``. The dense levels must store the last sparse dimensions
in order; a dense level *between* sparse levels is refused.

Example:
  >>> import jscorch as js
  >>> js.CSR
  Format(dense, compressed)
  >>> js.Format(js.dense, js.compressed, mode_ordering=(1, 0)) == js.CSC
  True
  >>> js.COO.name, js.CSC.mode_ordering, js.CSC.dim_to_lvl
  ('coo', (1, 0), (Dim(1), Dim(0)))
  >>> rows = js.Format(js.compressed, js.dense)
  >>> rows, rows.levels, rows.n_dense, rows.n_block_levels
  (Format(compressed, dense), (compressed,), 1, 1)
"""
from __future__ import annotations

import dataclasses
from typing import Sequence, Union

from .._errors import SparseFormatError
from .compressed import compressed
from .dense import dense
from .exprs import Dim, LevelExpr, mode_ordering_of
from .level import Level
from .singleton import singleton

# Names of the built-in level types (a level's ``name``); compare capabilities, not these.
DENSE = "dense"
COMPRESSED = "compressed"
SINGLETON = "singleton"


class Format:
  """A sparse tensor format (static, hashable).

  Args:
    *levels: the levels in storage order. A trailing run of ``dense`` levels after
      the last sparse level is stored as dense blocks (see the module docstring).
    mode_ordering: ``mode_ordering[k]`` is the sparse dimension stored by level
      ``k``; identity by default.
    n_batch: number of leading batch dimensions.
    n_dense: number of trailing dense block dimensions (besides dense levels below
      the last sparse level).

  Attributes:
    levels, mode_ordering: the levels with index buffers (and leading dense
      levels), in storage order; ``n_sparse`` counts them.
    n_batch: leading batch dimensions.
    n_dense: trailing dimensions stored densely under each entry, including the
      ``n_block_levels`` dense levels spelled below the last sparse level.
    n_block_levels: how many of the block dimensions were given as dense levels.

  Raises:
    SparseFormatError: when the levels do not form a valid format (a singleton
      level needs a non-unique parent, a dense level between sparse levels,
      ``mode_ordering`` is not a permutation, ...).
  """
  __slots__ = ("levels", "mode_ordering", "n_batch", "n_dense", "n_block_levels")

  def __init__(self, *levels: Level, mode_ordering: Sequence[int] | None = None,
               n_batch: int = 0, n_dense: int = 0,
               dim_to_lvl: Sequence[LevelExpr] | None = None):
    levels = tuple(levels)
    order = mode_ordering_of(len(levels), mode_ordering, dim_to_lvl)
    self._set(levels, order, int(n_batch), int(n_dense), 0)
    _check_levels(levels, order)
    last_sparse = max((k for k, lvl in enumerate(levels) if not lvl.full), default=None)
    n_below = 0 if last_sparse is None else len(levels) - 1 - last_sparse
    if n_below:
      n = len(levels)
      if order[last_sparse + 1:] != tuple(range(n - n_below, n)):
        raise SparseFormatError(
            f"Format: dense levels below the last sparse level must store the last sparse "
            f"dimensions in order; got mode_ordering={order} for levels {levels}, expected "
            f"it to end with {tuple(range(n - n_below, n))}. Transpose the array so those "
            "dimensions come last, or use compressed levels for them.")
      self._set(levels[:last_sparse + 1], order[:last_sparse + 1], int(n_batch),
                int(n_dense) + n_below, n_below)
    self._validate()

  @classmethod
  def _from_storage(cls, levels, mode_ordering, n_batch, n_dense, n_block_levels) -> Format:
    """A format from its storage attributes (``n_block_levels`` of the blocks spelled as
    dense levels); the spelling is dropped where it cannot apply."""
    self = object.__new__(cls)
    has_sparse = any(not lvl.full for lvl in levels)
    n_below = min(int(n_block_levels), int(n_dense)) if has_sparse else 0
    self._set(tuple(levels), tuple(mode_ordering), int(n_batch), int(n_dense), n_below)
    self._validate()
    return self

  def _set(self, levels, order, n_batch, n_dense, n_block_levels):
    for name, value in zip(self.__slots__, (levels, order, n_batch, n_dense, n_block_levels)):
      object.__setattr__(self, name, value)

  def __setattr__(self, name, value):
    raise dataclasses.FrozenInstanceError(f"Format is immutable; cannot set {name}.")

  def _validate(self):
    levels = self.levels
    _check_levels(levels, self.mode_ordering)
    if self.n_batch < 0 or self.n_dense < 0:
      raise SparseFormatError(
          f"Format: n_batch and n_dense must be >= 0; got n_batch={self.n_batch}, "
          f"n_dense={self.n_dense - self.n_block_levels}.")
    seen_sparse = False
    for k, lvl in enumerate(levels):
      parent = levels[k - 1] if k else None
      if lvl.full and seen_sparse:
        raise SparseFormatError(
            f"Format: level {k} is {lvl.name} but lies between sparse levels; got {levels}. Use "
            "a compressed level there, or order the dimensions so that the dense ones come "
            "last (dense levels below the last sparse level are stored as blocks).")
      if lvl.branchless and (parent is None or parent.full or parent.unique):
        raise SparseFormatError(
            f"Format: {lvl.name} level {k} needs a non-unique compressed or singleton "
            f"parent; got {levels}. Use compressed(unique=False) before it, as in COO.")
      if parent is not None and not parent.full and not parent.unique and not lvl.branchless:
        raise SparseFormatError(
            f"Format: level {k} follows a non-unique level and must be a singleton; got "
            f"{levels}.")
      seen_sparse |= not lvl.full

  # -- derived properties -----------------------------------------------------------
  @property
  def n_sparse(self) -> int:
    """Number of sparse (level) dimensions (dense levels below the last sparse one excluded)."""
    return len(self.levels)

  @property
  def ndim(self) -> int:
    return self.n_batch + self.n_sparse + self.n_dense

  @property
  def spelled_levels(self) -> tuple[Level, ...]:
    """The levels as given: ``levels`` followed by the ``n_block_levels`` dense levels."""
    return self.levels + (dense,) * self.n_block_levels

  @property
  def spelled_mode_ordering(self) -> tuple[int, ...]:
    """``mode_ordering`` over :attr:`spelled_levels`."""
    n = self.n_sparse
    return self.mode_ordering + tuple(range(n, n + self.n_block_levels))

  @property
  def dim_to_lvl(self) -> tuple[LevelExpr, ...]:
    """The level expression of each level: ``Dim(mode_ordering[k])`` today (see the module
    docstring)."""
    return tuple(Dim(d) for d in self.mode_ordering)

  @property
  def dims_of_levels(self) -> tuple[int, ...]:
    """Alias of ``mode_ordering``: the sparse dimension of each level."""
    return self.mode_ordering

  @property
  def levels_of_dims(self) -> tuple[int, ...]:
    """The level storing each sparse dimension (inverse of ``mode_ordering``)."""
    inv = [0] * self.n_sparse
    for k, d in enumerate(self.mode_ordering):
      inv[d] = k
    return tuple(inv)

  @property
  def ordered(self) -> bool:
    """Entries are in lexicographic storage order."""
    return all(lvl.ordered for lvl in self.levels)

  @property
  def unique(self) -> bool:
    """No coordinate tuple is stored twice."""
    # A non-unique level is followed only by singletons, so the last level decides.
    return not self.levels or self.levels[-1].unique

  @property
  def all_dense(self) -> bool:
    """Every level is dense: the array is stored as one dense block (no index buffers)."""
    return all(lvl.full for lvl in self.levels)

  @property
  def n_dense_levels(self) -> int:
    """Number of leading dense levels (the rest are compressed or singleton)."""
    n = 0
    while n < self.n_sparse and self.levels[n].full:
      n += 1
    return n

  @property
  def name(self) -> str | None:
    """The canonical name (``"csr"``, ...) when this is a named format, else None."""
    if self.n_block_levels:
      return None
    base = self.replace(n_batch=0, n_dense=0)
    for fmt_name, make in _NAMED.items():
      try:
        if make(self.n_sparse) == base:
          return fmt_name
      except SparseFormatError:
        continue
    return None

  def replace(self, **changes) -> Format:
    """A copy with some of ``levels``, ``mode_ordering``, ``n_batch``, ``n_dense``,
    ``n_block_levels`` changed (storage attributes; the spelling of dense levels below
    the last sparse level is kept where it still applies)."""
    kw = dict(levels=self.levels, mode_ordering=self.mode_ordering,
              n_batch=self.n_batch, n_dense=self.n_dense, n_block_levels=self.n_block_levels)
    kw.update(changes)
    n_block_levels = kw.pop("n_block_levels")
    levels = kw.pop("levels")
    base = Format(*levels, **kw)
    return Format._from_storage(base.levels, base.mode_ordering, base.n_batch, base.n_dense,
                                base.n_block_levels + n_block_levels)

  # -- value semantics ----------------------------------------------------------------
  def _key(self):
    return (self.levels, self.mode_ordering, self.n_batch, self.n_dense, self.n_block_levels)

  def __eq__(self, other):
    return isinstance(other, Format) and self._key() == other._key()

  def __hash__(self):
    return hash(self._key())

  def __repr__(self):
    parts = [repr(lvl) for lvl in self.spelled_levels]
    order = self.spelled_mode_ordering
    if order != tuple(range(len(order))):
      parts.append(f"mode_ordering={order}")
    if self.n_batch:
      parts.append(f"n_batch={self.n_batch}")
    if self.n_dense - self.n_block_levels:
      parts.append(f"n_dense={self.n_dense - self.n_block_levels}")
    return f"Format({', '.join(parts)})"

  def __reduce__(self):
    return (_rebuild_format, self._key())


def _check_levels(levels, order):
  if not all(isinstance(lvl, Level) for lvl in levels):
    raise SparseFormatError(
        f"Format: levels must be Level objects (js.dense, js.compressed, js.singleton); "
        f"got {levels!r}.")
  if sorted(order) != list(range(len(levels))):
    raise SparseFormatError(
        f"Format: mode_ordering must be a permutation of range({len(levels)}); "
        f"got mode_ordering={order}.")


def _rebuild_format(levels, mode_ordering, n_batch, n_dense, n_block_levels=0):
  return Format._from_storage(levels, mode_ordering, n_batch, n_dense, n_block_levels)


# -- named formats -------------------------------------------------------------------
def _need_2d(name):
  def check(n):
    if n != 2:
      raise SparseFormatError(
          f"{name.upper()} stores exactly 2 sparse dimensions; got {n}. Use 'coo' or 'csf' "
          "for other ranks, or n_batch=/n_dense= for the extra dimensions.")
  return check


def _coo(n: int) -> Format:
  if n < 1:
    raise SparseFormatError(f"COO needs at least 1 sparse dimension; got {n}.")
  if n == 1:
    return Format(compressed)
  return Format(compressed(unique=False), *([singleton(unique=False)] * (n - 2)), singleton)


def _csr(n: int) -> Format:
  _need_2d("csr")(n)
  return Format(dense, compressed)


def _csc(n: int) -> Format:
  _need_2d("csc")(n)
  return Format(dense, compressed, mode_ordering=(1, 0))


def _dcsr(n: int) -> Format:
  _need_2d("dcsr")(n)
  return Format(compressed, compressed)


def _csf(n: int) -> Format:
  if n < 1:
    raise SparseFormatError(f"CSF needs at least 1 sparse dimension; got {n}.")
  return Format(*([compressed] * n))


_NAMED = {"coo": _coo, "csr": _csr, "csc": _csc, "dcsr": _dcsr, "csf": _csf}
FORMAT_NAMES = tuple(_NAMED)

COO = _coo(2)
CSR = _csr(2)
CSC = _csc(2)
DCSR = _dcsr(2)
CSF = _csf(3)

FormatLike = Union[Format, str]


def resolve_format(fmt: FormatLike, ndim: int, *, n_batch: int | None = None,
                   n_dense: int | None = None, func: str = "jscorch") -> Format:
  """Turns a format name or Format into a Format for a tensor of rank ``ndim``.

  Named formats adapt to the number of sparse dimensions (``"coo"`` and ``"csf"``
  to any rank; every name to the level-less ``Format()`` when ``n_batch`` and
  ``n_dense`` cover all dimensions); ``n_batch`` / ``n_dense`` given here override
  zeros in ``fmt``. For a format with dense levels below its last sparse level,
  ``n_dense`` may count those levels or not (the rank decides).

  Args:
    fmt: a :class:`Format` or one of ``"coo"``, ``"csr"``, ``"csc"``, ``"dcsr"``,
      ``"csf"`` (case-insensitive).
    ndim: the rank of the tensor.
    n_batch, n_dense: batch and block dimension counts (default: those of ``fmt``).
    func: the public function name used in error messages.

  Raises:
    SparseFormatError: unknown name, or a format that cannot store ``ndim`` dims.

  Example:
    >>> resolve_format("coo", 3)
    Format(compressed(nonunique), singleton(nonunique), singleton)
    >>> resolve_format("csr", 3, n_batch=1)
    Format(dense, compressed, n_batch=1)
    >>> resolve_format(Format(compressed, dense), 3, n_batch=1).n_dense
    1
    >>> resolve_format("csr", 2, n_batch=2)
    Format(n_batch=2)
  """
  if isinstance(fmt, str):
    key = fmt.lower()
    if key not in _NAMED:
      raise SparseFormatError(
          f"{func}: unknown format name; got format={fmt!r}, expected one of "
          f"{FORMAT_NAMES} or a js.Format.")
    nb = n_batch or 0
    nd = n_dense or 0
    n_sparse = ndim - nb - nd
    if n_sparse == 0 and ndim:
      return Format(n_batch=nb, n_dense=nd)      # no sparse dimension: nothing to name
    try:
      base = _NAMED[key](n_sparse)
    except SparseFormatError as e:
      raise SparseFormatError(f"{func}: format={fmt!r} does not fit an array of rank "
                              f"{ndim} with n_batch={nb}, n_dense={nd}: {e}") from None
    return base.replace(n_batch=nb, n_dense=nd)
  if not isinstance(fmt, Format):
    raise SparseFormatError(
        f"{func}: format must be a js.Format or a name in {FORMAT_NAMES}; got "
        f"{type(fmt).__name__} {fmt!r}.")
  nb = fmt.n_batch if n_batch is None else n_batch
  t = fmt.n_block_levels
  own_nd = fmt.n_dense - t          # block dims not spelled as dense levels
  if t and n_dense is not None and n_dense == own_nd + t and \
      ndim - nb - n_dense != fmt.n_sparse + t:
    n_dense = own_nd                # the caller counted the dense levels as block dims
  nd = own_nd if n_dense is None else n_dense
  for arg, given, own in (("n_batch", n_batch, fmt.n_batch), ("n_dense", n_dense, own_nd)):
    if given is not None and own and given != own:
      raise SparseFormatError(
          f"{func}: {arg}={given} conflicts with the format's own {arg}={own}; got "
          f"format={fmt!r}. Pass one or the other.")
  n_sparse = ndim - nb - nd
  if fmt.n_sparse + t != n_sparse:
    name = fmt.name
    if name in ("coo", "csf") and n_sparse >= 1:
      return _NAMED[name](n_sparse).replace(n_batch=nb, n_dense=nd)
    raise SparseFormatError(
        f"{func}: format {fmt!r} has {fmt.n_sparse + t} sparse levels but the array has "
        f"{n_sparse} sparse dimensions (rank {ndim}, n_batch={nb}, n_dense={nd}). Pass a "
        "format with one level per sparse dimension, or adjust n_batch=/n_dense=.")
  return fmt.replace(n_batch=nb, n_dense=nd + t)
