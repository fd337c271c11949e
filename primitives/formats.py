"""Sparse tensor formats: TACO-style level types, mode ordering, batch and block dimensions.

A :class:`Format` is static metadata (frozen, hashable) that says how each
dimension of a tensor is stored. The dimensions of a tensor split, in order, into

* ``n_batch`` leading **batch** dimensions: each batch element has its own pattern
  with the same capacity (what ``vmap`` over a sparse array produces);
* the **sparse** dimensions, stored as one *level* each, in storage order
  ``mode_ordering`` (level ``k`` stores sparse dimension ``mode_ordering[k]``);
* ``n_dense`` trailing **block** dimensions: each stored entry holds a dense block.

Level types (TACO / MLIR ``sparse_tensor``):

* ``dense``: every coordinate is present, no buffers;
* ``compressed``: a ``pos`` buffer (segment offsets per parent position) and a
  ``crd`` buffer (coordinates);
* ``singleton``: a ``crd`` buffer only, one coordinate per parent position (COO).

Example:
  >>> import jscorch as js
  >>> js.CSR
  Format(dense, compressed)
  >>> js.Format(js.dense, js.compressed, mode_ordering=(1, 0)) == js.CSC
  True
  >>> js.COO.name, js.CSC.mode_ordering
  ('coo', (1, 0))
"""
from __future__ import annotations

import dataclasses
from typing import Sequence, Union

from ._errors import SparseFormatError

DENSE = "dense"
COMPRESSED = "compressed"
SINGLETON = "singleton"
_LEVEL_KINDS = (DENSE, COMPRESSED, SINGLETON)


@dataclasses.dataclass(frozen=True)
class Level:
  """One storage level: its type and the properties of its coordinates.

  Attributes:
    kind: ``"dense"``, ``"compressed"`` or ``"singleton"``.
    ordered: coordinates within each parent segment are sorted.
    unique: no coordinate repeats within a parent segment.

  A level is callable to change its properties: ``compressed(unique=False)``.
  """
  kind: str
  ordered: bool = True
  unique: bool = True

  def __post_init__(self):
    if self.kind not in _LEVEL_KINDS:
      raise SparseFormatError(
          f"Level: unknown level type; got kind={self.kind!r}, expected one of "
          f"{_LEVEL_KINDS}.")
    if self.kind == DENSE and not (self.ordered and self.unique):
      raise SparseFormatError(
          "Level: a dense level is always ordered and unique; got "
          f"ordered={self.ordered}, unique={self.unique}. Use a compressed level.")

  def __call__(self, *, ordered: bool | None = None, unique: bool | None = None) -> Level:
    return Level(self.kind,
                 self.ordered if ordered is None else ordered,
                 self.unique if unique is None else unique)

  @property
  def has_pos(self) -> bool:
    return self.kind == COMPRESSED

  @property
  def has_crd(self) -> bool:
    return self.kind != DENSE

  def __repr__(self):
    props = [p for p, on in (("unordered", not self.ordered),
                             ("nonunique", not self.unique)) if on]
    return self.kind + (f"({', '.join(props)})" if props else "")


dense = Level(DENSE)
compressed = Level(COMPRESSED)
singleton = Level(SINGLETON)


class Format:
  """A sparse tensor format (static, hashable).

  Args:
    *levels: the sparse levels in storage order.
    mode_ordering: ``mode_ordering[k]`` is the sparse dimension stored by level
      ``k``; identity by default.
    n_batch: number of leading batch dimensions.
    n_dense: number of trailing dense block dimensions.

  Raises:
    SparseFormatError: when the levels do not form a valid format (a singleton
      level needs a non-unique parent, a dense level cannot follow a sparse one,
      ``mode_ordering`` is not a permutation, ...).
  """
  __slots__ = ("levels", "mode_ordering", "n_batch", "n_dense")

  def __init__(self, *levels: Level, mode_ordering: Sequence[int] | None = None,
               n_batch: int = 0, n_dense: int = 0):
    levels = tuple(levels)
    order = tuple(range(len(levels))) if mode_ordering is None else tuple(
        int(m) for m in mode_ordering)
    object.__setattr__(self, "levels", levels)
    object.__setattr__(self, "mode_ordering", order)
    object.__setattr__(self, "n_batch", int(n_batch))
    object.__setattr__(self, "n_dense", int(n_dense))
    self._validate()

  def __setattr__(self, name, value):
    raise dataclasses.FrozenInstanceError(f"Format is immutable; cannot set {name}.")

  def _validate(self):
    levels = self.levels
    if not all(isinstance(lvl, Level) for lvl in levels):
      raise SparseFormatError(
          f"Format: levels must be Level objects (js.dense, js.compressed, js.singleton); "
          f"got {levels!r}.")
    if sorted(self.mode_ordering) != list(range(len(levels))):
      raise SparseFormatError(
          f"Format: mode_ordering must be a permutation of range({len(levels)}); "
          f"got mode_ordering={self.mode_ordering}.")
    if self.n_batch < 0 or self.n_dense < 0:
      raise SparseFormatError(
          f"Format: n_batch and n_dense must be >= 0; got n_batch={self.n_batch}, "
          f"n_dense={self.n_dense}.")
    seen_sparse = False
    for k, lvl in enumerate(levels):
      if lvl.kind == DENSE and seen_sparse:
        raise SparseFormatError(
            f"Format: level {k} is dense but follows a sparse level; got {levels}. "
            "Store trailing dense dimensions as blocks with n_dense= instead.")
      if lvl.kind == SINGLETON:
        parent = levels[k - 1] if k else None
        if parent is None or parent.kind == DENSE or parent.unique:
          raise SparseFormatError(
              f"Format: singleton level {k} needs a non-unique compressed or singleton "
              f"parent; got {levels}. Use compressed(unique=False) before it, as in COO.")
      if k and levels[k - 1].kind != DENSE and not levels[k - 1].unique \
          and lvl.kind != SINGLETON:
        raise SparseFormatError(
            f"Format: level {k} follows a non-unique level and must be a singleton; got "
            f"{levels}.")
      seen_sparse |= lvl.kind != DENSE

  # -- derived properties -----------------------------------------------------------
  @property
  def n_sparse(self) -> int:
    """Number of sparse (level) dimensions."""
    return len(self.levels)

  @property
  def ndim(self) -> int:
    return self.n_batch + self.n_sparse + self.n_dense

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
  def n_dense_levels(self) -> int:
    """Number of leading dense levels (the rest are compressed or singleton)."""
    n = 0
    while n < self.n_sparse and self.levels[n].kind == DENSE:
      n += 1
    return n

  @property
  def name(self) -> str | None:
    """The canonical name (``"csr"``, ...) when this is a named format, else None."""
    base = self.replace(n_batch=0, n_dense=0)
    for fmt_name, make in _NAMED.items():
      try:
        if make(self.n_sparse) == base:
          return fmt_name
      except SparseFormatError:
        continue
    return None

  def replace(self, **changes) -> Format:
    """A copy with some of ``levels``, ``mode_ordering``, ``n_batch``, ``n_dense`` changed."""
    kw = dict(levels=self.levels, mode_ordering=self.mode_ordering,
              n_batch=self.n_batch, n_dense=self.n_dense)
    kw.update(changes)
    levels = kw.pop("levels")
    return Format(*levels, **kw)

  # -- value semantics ----------------------------------------------------------------
  def _key(self):
    return (self.levels, self.mode_ordering, self.n_batch, self.n_dense)

  def __eq__(self, other):
    return isinstance(other, Format) and self._key() == other._key()

  def __hash__(self):
    return hash(self._key())

  def __repr__(self):
    parts = [repr(lvl) for lvl in self.levels]
    if self.mode_ordering != tuple(range(self.n_sparse)):
      parts.append(f"mode_ordering={self.mode_ordering}")
    if self.n_batch:
      parts.append(f"n_batch={self.n_batch}")
    if self.n_dense:
      parts.append(f"n_dense={self.n_dense}")
    return f"Format({', '.join(parts)})"

  def __reduce__(self):
    return (_rebuild_format, self._key())


def _rebuild_format(levels, mode_ordering, n_batch, n_dense):
  return Format(*levels, mode_ordering=mode_ordering, n_batch=n_batch, n_dense=n_dense)


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
  to any rank); ``n_batch`` / ``n_dense`` given here override zeros in ``fmt``.

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
  nd = fmt.n_dense if n_dense is None else n_dense
  for arg, given, own in (("n_batch", n_batch, fmt.n_batch), ("n_dense", n_dense, fmt.n_dense)):
    if given is not None and own and given != own:
      raise SparseFormatError(
          f"{func}: {arg}={given} conflicts with the format's own {arg}={own}; got "
          f"format={fmt!r}. Pass one or the other.")
  n_sparse = ndim - nb - nd
  if fmt.n_sparse != n_sparse:
    name = fmt.name
    if name in ("coo", "csf") and n_sparse >= 1:
      return _NAMED[name](n_sparse).replace(n_batch=nb, n_dense=nd)
    raise SparseFormatError(
        f"{func}: format {fmt!r} has {fmt.n_sparse} sparse levels but the array has "
        f"{n_sparse} sparse dimensions (rank {ndim}, n_batch={nb}, n_dense={nd}). Pass a "
        "format with one level per sparse dimension, or adjust n_batch=/n_dense=.")
  return fmt.replace(n_batch=nb, n_dense=nd)
