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
which coordinate level ``k`` stores, as MLIR's ``dimToLvl`` does. For an unblocked
format every expression is ``Dim(d)`` (level ``k`` stores sparse dimension ``d``),
so the map is a permutation and ``mode_ordering[k] == dim_to_lvl[k].dim``;
``mode_ordering`` is the constructor argument and property everything uses.

**Blocked formats** (BSR: ``(i // bm, j // bn, i % bm, j % bn)``; :func:`blocked`,
:func:`BSR`, or ``dim_to_lvl`` of ``FloorDiv`` / ``Mod``) store the block grid with
the base format's levels and every block densely, row-major: a blocked format of
an ``[M, N]`` array is stored exactly as its *block view*, the base format of
shape ``[M/bm, N/bn, bm, bn]`` with two block dimensions. So ``levels`` and
``mode_ordering`` are the grid's, ``n_dense`` counts the block dimensions,
``blocks`` holds ``(bm, bn)``, ``storage`` is the block view's (unblocked) format
and ``base`` the format the grid is stored in; ``ndim`` is the logical rank.

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
  >>> bsr = js.BSR((2, 3))
  >>> bsr.dim_to_lvl, bsr.blocks, bsr.ndim
  ((Dim(0) // 2, Dim(1) // 3, Dim(0) % 2, Dim(1) % 3), (2, 3), 2)
  >>> bsr.storage
  Format(dense, compressed, n_dense=2)
"""
from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import numpy as np

from .._errors import SparseFormatError
from .compressed import compressed
from .dense import dense
from .exprs import Dim, FloorDiv, LevelExpr, Mod, blocked_map, mode_ordering_of
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
    blocks: the block size of each sparse dimension of a blocked format, else ``()``.
      Its ``n_dense`` then counts the ``len(blocks)`` block dimensions of the storage.

  Raises:
    SparseFormatError: when the levels do not form a valid format (a singleton
      level needs a non-unique parent, a dense level between sparse levels,
      ``mode_ordering`` is not a permutation, ...).
  """
  __slots__ = ("levels", "mode_ordering", "n_batch", "n_dense", "n_block_levels", "blocks")

  def __init__(self, *levels: Level, mode_ordering: Sequence[int] | None = None,
               n_batch: int = 0, n_dense: int = 0,
               dim_to_lvl: Sequence[LevelExpr] | None = None):
    levels = tuple(levels)
    if dim_to_lvl is not None and not all(isinstance(e, Dim) for e in dim_to_lvl) and \
        any(isinstance(e, (FloorDiv, Mod)) for e in dim_to_lvl):
      base = _blocked_base(levels, mode_ordering, dim_to_lvl, n_batch, n_dense)
      order, blocks = blocked_map(dim_to_lvl)
      self._set(base.levels, base.mode_ordering, base.n_batch, len(blocks), 0, blocks)
      self._validate()
      return
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
  def _from_storage(cls, levels, mode_ordering, n_batch, n_dense, n_block_levels,
                    blocks=()) -> Format:
    """A format from its storage attributes (``n_block_levels`` of the blocks spelled as
    dense levels, ``blocks`` of a blocked format); the spelling is dropped where it
    cannot apply."""
    self = object.__new__(cls)
    has_sparse = any(not lvl.full for lvl in levels)
    n_below = min(int(n_block_levels), int(n_dense)) if has_sparse and not blocks else 0
    self._set(tuple(levels), tuple(mode_ordering), int(n_batch), int(n_dense), n_below,
              tuple(int(b) for b in blocks))
    self._validate()
    return self

  def _set(self, levels, order, n_batch, n_dense, n_block_levels, blocks=()):
    values = (levels, order, n_batch, n_dense, n_block_levels, blocks)
    for name, value in zip(self.__slots__, values):
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
    if self.blocks and (len(self.blocks) != len(levels) or self.n_dense != len(self.blocks) or
                        self.n_block_levels or not all(b >= 1 for b in self.blocks)):
      raise SparseFormatError(
          f"Format: a blocked format needs one block size >= 1 per sparse level and no other "
          f"block dimensions; got blocks={self.blocks} for {len(levels)} level(s), "
          f"n_dense={self.n_dense - len(self.blocks)}. Use js.blocked(format, block) on a "
          "format without n_dense.")

  # -- derived properties -----------------------------------------------------------
  @property
  def n_sparse(self) -> int:
    """Number of sparse (level) dimensions (dense levels below the last sparse one excluded)."""
    return len(self.levels)

  @property
  def ndim(self) -> int:
    """The rank of the tensors of this format (logical: a blocked format's block dims,
    which only its storage has, are not counted)."""
    return self.n_batch + self.n_sparse + self.n_dense - len(self.blocks)

  @property
  def storage(self) -> Format:
    """The unblocked format the buffers are stored in: a blocked format's block view
    (base format plus ``len(blocks)`` block dims); the format itself otherwise."""
    if not self.blocks:
      return self
    return Format._from_storage(self.levels, self.mode_ordering, self.n_batch, self.n_dense, 0)

  @property
  def base(self) -> Format:
    """The format of a blocked format's block grid (without the block dims); the
    format itself when unblocked."""
    if not self.blocks:
      return self
    return Format._from_storage(self.levels, self.mode_ordering, self.n_batch, 0, 0)

  @property
  def spelled_levels(self) -> tuple[Level, ...]:
    """The levels as given: ``levels`` followed by the ``n_block_levels`` dense levels
    (a blocked format: by one dense level per block dimension)."""
    return self.levels + (dense,) * (self.n_block_levels + len(self.blocks))

  @property
  def spelled_mode_ordering(self) -> tuple[int, ...]:
    """``mode_ordering`` over :attr:`spelled_levels`."""
    n = self.n_sparse
    return self.mode_ordering + tuple(range(n, n + self.n_block_levels))

  @property
  def dim_to_lvl(self) -> tuple[LevelExpr, ...]:
    """The level expression of each level: ``Dim(mode_ordering[k])``; for a blocked format
    ``FloorDiv`` over the grid levels, then one ``Mod`` per dimension (module docstring)."""
    if self.blocks:
      return tuple(FloorDiv(d, self.blocks[d]) for d in self.mode_ordering) + \
          tuple(Mod(d, b) for d, b in enumerate(self.blocks))
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
    """The canonical name (``"csr"``, ...) when this is a named format, else None (blocked
    formats have no name: their ``repr`` is ``BSR((bm, bn))`` or ``blocked(base, block)``)."""
    if self.n_block_levels or self.blocks:
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
    ``n_block_levels``, ``blocks`` changed (storage attributes; the spelling of dense
    levels below the last sparse level is kept where it still applies)."""
    kw = dict(levels=self.levels, mode_ordering=self.mode_ordering, n_batch=self.n_batch,
              n_dense=self.n_dense, n_block_levels=self.n_block_levels, blocks=self.blocks)
    kw.update(changes)
    n_block_levels = kw.pop("n_block_levels")
    blocks = kw.pop("blocks")
    levels = kw.pop("levels")
    base = Format(*levels, **kw)
    return Format._from_storage(base.levels, base.mode_ordering, base.n_batch, base.n_dense,
                                base.n_block_levels + n_block_levels, blocks)

  # -- value semantics ----------------------------------------------------------------
  def _key(self):
    return (self.levels, self.mode_ordering, self.n_batch, self.n_dense, self.n_block_levels,
            self.blocks)

  def __eq__(self, other):
    return isinstance(other, Format) and self._key() == other._key()

  def __hash__(self):
    return hash(self._key())

  def __repr__(self):
    if self.blocks:
      base = self.base
      if base == CSR:
        return f"BSR({self.blocks})"
      named = base.name and not base.n_batch
      return f"blocked({base.name.upper() if named else repr(base)}, {self.blocks})"
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


def _rebuild_format(levels, mode_ordering, n_batch, n_dense, n_block_levels=0, blocks=()):
  return Format._from_storage(levels, mode_ordering, n_batch, n_dense, n_block_levels, blocks)


def _blocked_base(levels, mode_ordering, dim_to_lvl, n_batch, n_dense) -> Format:
  """The unblocked grid format of ``Format(*levels, dim_to_lvl=<blocked map>)``."""
  order, blocks = blocked_map(dim_to_lvl)
  n = len(blocks)
  if len(levels) != 2 * n or not all(lvl.full for lvl in levels[n:]) or n_dense or \
      mode_ordering is not None:
    raise SparseFormatError(
        f"Format: a blocked dim_to_lvl needs {2 * n} levels, the last {n} dense (the "
        f"in-block offsets), and neither mode_ordering= nor n_dense=; got levels {levels}, "
        f"mode_ordering={mode_ordering}, n_dense={n_dense}. Use e.g. Format(dense, "
        "compressed, dense, dense, dim_to_lvl=(Dim(0) // 2, Dim(1) // 3, Dim(0) % 2, "
        "Dim(1) % 3)).")
  base = Format(*levels[:n], mode_ordering=order, n_batch=n_batch)
  if base.n_block_levels:
    raise SparseFormatError(
        f"Format: the block grid of a blocked format cannot end with dense levels below its "
        f"last sparse level; got grid levels {levels[:n]}. Use a compressed level there.")
  return base


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


# -- blocked formats -------------------------------------------------------------------
def blocked(base: FormatLike, block: Sequence[int]) -> Format:
  """The blocked version of ``base``: its block grid stored in ``base``, each block dense.

  An array of logical shape `[*batch, d_0, ..., d_n-1]` in ``blocked(base, (b_0, ...))``
  is stored as its block view, ``base`` with shape `[*batch, d_0/b_0, ...,
  d_n-1/b_n-1, b_0, ..., b_n-1]` and the ``n`` block dims (values `[*batch, nse,
  b_0, ..., b_n-1]`, ``nse`` counting blocks); blocks are row-major in every case.
  Each ``d_k`` must be a multiple of ``b_k``.

  Args:
    base: the grid's format, a :class:`Format` or a name (``"csr"`` gives BSR,
      ``"csc"`` the blocked CSC, ``"coo"``, ``"dcsr"``, ...); no ``n_dense``.
    block: one block size (int >= 1) per sparse dimension of ``base`` (static).

  Raises:
    SparseFormatError: a block that does not fit ``base``.

  Example:
    >>> import jscorch as js
    >>> js.blocked(js.CSC, (2, 3)), js.blocked("csr", (2, 3)) == js.BSR((2, 3))
    (blocked(CSC, (2, 3)), True)
    >>> js.blocked(js.COO, (2, 2)).dim_to_lvl
    (Dim(0) // 2, Dim(1) // 2, Dim(0) % 2, Dim(1) % 2)
  """
  block = tuple(block) if isinstance(block, (tuple, list)) else block
  ok = isinstance(block, tuple) and all(isinstance(b, (int, np.integer)) and not
                                        isinstance(b, bool) and b >= 1 for b in block)
  if not ok or not block:
    raise SparseFormatError(
        f"blocked: block must be a tuple of ints >= 1, one per sparse dimension; got "
        f"block={block!r}. Pass e.g. (16, 16).")
  block = tuple(int(b) for b in block)
  fmt = resolve_format(base, len(block), func="blocked") if isinstance(base, str) else base
  if not isinstance(fmt, Format) or fmt.blocks or fmt.n_dense or \
      fmt.n_sparse != len(block):
    raise SparseFormatError(
        f"blocked: the base must be an unblocked format with {len(block)} sparse levels "
        f"(one per block size) and no n_dense; got base={base!r}, block={block}. Pass "
        "e.g. js.blocked(js.CSR, (2, 3)).")
  return Format._from_storage(fmt.levels, fmt.mode_ordering, fmt.n_batch, len(block), 0, block)


def BSR(block: Sequence[int]) -> Format:  # noqa: N802 (a format constructor, named as CSR)
  """Block sparse row: ``blocked(CSR, block)``, level map ``(i // bm, j // bn, i % bm,
  j % bn)``; an ``[M, N]`` array stores its ``[M/bm, N/bn]`` block grid in CSR and
  values `[nse, bm, bn]` (see :func:`blocked`).

  Example:
    >>> import jscorch as js
    >>> js.BSR((2, 3)).storage == js.CSR.replace(n_dense=2)
    True
  """
  if not isinstance(block, (tuple, list)):
    raise SparseFormatError(
        f"BSR: block must be a (bm, bn) tuple of ints >= 1; got block={block!r}. Pass e.g. "
        "js.BSR((16, 16)).")
  if len(block) != 2:
    raise SparseFormatError(
        f"BSR: block must be a (bm, bn) tuple of ints >= 1; got block={tuple(block)!r}. Pass "
        "e.g. js.BSR((16, 16)), or js.blocked(format, block) for other ranks.")
  return blocked(CSR, block)

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
  if fmt.blocks:
    return _resolve_blocked(fmt, ndim, n_batch, n_dense, func)
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


def _resolve_blocked(fmt: Format, ndim: int, n_batch, n_dense, func: str) -> Format:
  """:func:`resolve_format` of a blocked format (batch dims only; no block dims of its own)."""
  nb = fmt.n_batch if n_batch is None else n_batch
  if n_batch is not None and fmt.n_batch and n_batch != fmt.n_batch:
    raise SparseFormatError(
        f"{func}: n_batch={n_batch} conflicts with the format's own n_batch={fmt.n_batch}; "
        f"got format={fmt!r}. Pass one or the other.")
  if n_dense or ndim - nb != fmt.n_sparse:
    raise SparseFormatError(
        f"{func}: the blocked format {fmt!r} stores {fmt.n_sparse} blocked sparse dimensions "
        f"and no other dims; got an array of rank {ndim} with n_batch={nb}, "
        f"n_dense={n_dense or 0}. Pass an array of rank {nb + fmt.n_sparse} (n_batch= for "
        "leading batch dims), or an unblocked format.")
  return fmt.replace(n_batch=nb)
