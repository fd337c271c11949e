"""The level protocol: what one storage level of a sparse tensor must answer.

A format stores its sparse dimensions as a sequence of *levels* (TACO / MLIR
``sparse_tensor``). Each level kind is one subclass of :class:`Level`, in its own
module, registered by name with :func:`register_level`; everything that walks
levels (layouts, conversions, checks, unions) loops over them and asks these
methods, never compares kind names:

* **static layout**: :attr:`Level.buffers` (``("pos", "crd")``, ``("crd",)``,
  ``()``), :meth:`Level.capacity`, :meth:`Level.fixed_capacity`,
  :meth:`Level.buffer_shape`;
* **portable storage walk** (``jax.numpy``, one batch element):
  :meth:`Level.positions` (parent and coordinate of every position) and
  :meth:`Level.assemble` (buffers from sorted coordinates);
* **host validation** (numpy, concrete buffers): :meth:`Level.check`;
* **properties** the format rules and planners ask: ``ordered``, ``unique``,
  :attr:`Level.full` (every coordinate present, no buffers), :attr:`Level.branchless`
  (one position per parent position), :attr:`Level.has_locate`.

Positions: a level with parent capacity ``P`` (1 for the first level) has
``capacity`` positions; position ``p`` belongs to one parent position and holds one
coordinate. Unused positions are **padding**: their coordinate equals the
dimension size.

Example:
  >>> from jscorch.primitives.formats import Level, compressed
  >>> Level("compressed", unique=False) == compressed(unique=False)
  True
  >>> compressed.buffers, compressed.capacity(parent_cap=4, size=6, nse=5, last=False)
  (('pos', 'crd'), 5)
"""
from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import numpy as np

from .._errors import SparseFormatError

_LEVEL_TYPES: dict[str, type] = {}


class _LevelMeta(abc.ABCMeta):
  """``Level("compressed", ordered, unique)`` builds the level type registered by that name."""

  def __call__(cls, *args, **kwargs):
    if cls is Level:
      if args:
        kind, args = args[0], args[1:]
      else:
        kind = kwargs.pop("kind", None)
      return level_type(kind)(*args, **kwargs)
    return super().__call__(*args, **kwargs)


@dataclasses.dataclass(frozen=True, repr=False)
class Level(metaclass=_LevelMeta):
  """One storage level: its type (the subclass) and the properties of its coordinates.

  ``Level(name, ordered=True, unique=True)`` builds the registered level type
  ``name``; a level is callable to change its properties: ``compressed(unique=False)``.
  Levels are frozen, hashable and picklable (safe as static primitive parameters).

  Attributes:
    ordered: coordinates within each parent segment are sorted.
    unique: no coordinate repeats within a parent segment.
    name: the level type's registered name (``kind`` is an alias).
    buffers: the index buffers of the level, in storage order.
    full: every coordinate of every parent position is present (no buffers).
    branchless: exactly one position per parent position (a singleton).
    has_locate: a coordinate's position can be computed without a search.
    has_iterate: the level type implements :meth:`iterate` (generated kernels can loop
      over it; others run the portable lowering).
  """
  name: ClassVar[str] = ""
  buffers: ClassVar[tuple[str, ...]] = ()
  full: ClassVar[bool] = False
  branchless: ClassVar[bool] = False
  has_locate: ClassVar[bool] = False

  ordered: bool = True
  unique: bool = True

  def __call__(self, *, ordered: bool | None = None, unique: bool | None = None) -> Level:
    changes = {k: v for k, v in (("ordered", ordered), ("unique", unique)) if v is not None}
    return dataclasses.replace(self, **changes)

  @property
  def kind(self) -> str:
    """The level type's name (``"dense"``, ``"compressed"``, ...)."""
    return self.name

  @property
  def has_pos(self) -> bool:
    return "pos" in self.buffers

  @property
  def has_crd(self) -> bool:
    return "crd" in self.buffers

  @property
  def has_iterate(self) -> bool:
    return type(self).iterate is not Level.iterate

  def __repr__(self):
    props = [p for p, on in (("unordered", not self.ordered),
                             ("nonunique", not self.unique)) if on]
    return self.name + (f"({', '.join(props)})" if props else "")

  # -- static layout ---------------------------------------------------------------------
  @abc.abstractmethod
  def capacity(self, parent_cap: int, size: int, nse: int, last: bool) -> int:
    """Number of positions of this level.

    Args:
      parent_cap: positions of the parent level (1 for the first level).
      size: the size of the dimension the level stores.
      nse: the capacity of the tensor (stored entries).
      last: this is the last level (its positions are the entries).
    """

  def fixed_capacity(self, parent_cap: int, size: int) -> int | None:
    """The only capacity this level can have, or None when ``nse`` decides it."""
    return None

  def buffer_shape(self, role: str, parent_cap: int, cap: int) -> tuple[int, ...]:
    """Shape of buffer ``role`` of one batch element (``pos`` `[parent_cap + 1]`, ``crd``
    `[cap]`)."""
    if role == "pos":
      return (parent_cap + 1,)
    if role == "crd":
      return (cap,)
    raise NotImplementedError(f"{type(self).__name__}.buffer_shape: no rule for {role!r}.")

  # -- portable storage walk (jax.numpy, one batch element) -------------------------------
  @abc.abstractmethod
  def positions(self, bufs: tuple, parent_cap: int, cap: int, size: int, idt):
    """``(parent, crd)``, each `[cap]`: the parent position and coordinate of every position.

    Padding positions may have any parent; their coordinate must be out of range
    (``>= size``), which marks the leaf as padding.
    """

  @abc.abstractmethod
  def assemble(self, crd, node, valid, used, parent_cap: int, cap: int, size: int, idt):
    """Buffers of this level from sorted (and unique where required) leaves.

    Args:
      crd: `[n]` the coordinate of each leaf at this level.
      node: `[n]` each leaf's ancestor position at the parent level.
      valid: `[n]` bool, the leaf is in use (in-use leaves come first).
      used: scalar, positions in use at the parent level so far.

    Returns:
      ``(buffers, node, used)``: this level's buffers (in the order of
      :attr:`buffers`), each leaf's position at this level, positions in use.
    """

  # -- loop-nest IR (primitives/loopnest.py) --------------------------------------------
  def iterate(self, coord, src: int, level: int, size: int, cap: int, parent_cap: int,
              unit: bool):
    """The IR iterator over this level's positions under one parent position.

    Args:
      coord: the ``loopnest.Coord`` the iterator binds.
      src: the structure (0 = the driver, s = a co-iterated partner).
      level: the level number (its parent's position is ``Pos(src, level - 1)``).
      size, cap, parent_cap: the dimension size, this level's and its parent's capacity.
      unit: the parent is the outer loop's unit (the first level).

    Raises:
      NotImplementedError: the level type has no loop-nest iteration (no kernel).
    """
    raise NotImplementedError(f"{type(self).__name__}.iterate: no loop-nest iteration.")

  def locate(self, parent, coord, size: int):
    """The IR expression of the position of ``coord`` under position ``parent`` (IR
    expressions) found without a search, or None (see :attr:`has_locate`)."""
    return None

  # -- host validation (numpy, concrete buffers of one batch element) -----------------------
  @abc.abstractmethod
  def check(self, bufs: tuple, parent_live, cap: int, size: int, k: int, func: str,
            where: str):
    """Validates the concrete buffers of level ``k``; returns ``(parent, crd, live)``.

    Args:
      parent_live: `[parent_cap]` bool, which parent positions are in use.

    Returns:
      numpy arrays over the ``cap`` positions: parent position, coordinate, in use.

    Raises:
      SparseFormatError: naming the level, the position and the fix.
    """


def register_level(cls: type) -> type:
  """Registers a level type under ``cls.name`` (usable as a class decorator).

  After registration ``Level(cls.name, ...)`` builds it; formats, layouts,
  conversions and checks need nothing else.

  Raises:
    SparseFormatError: ``cls`` is not a named subclass of :class:`Level`, or its
      name is taken by another level type.
  """
  if not (isinstance(cls, type) and issubclass(cls, Level) and cls.name):
    raise SparseFormatError(
        f"register_level: expected a subclass of Level with a name; got {cls!r}. Subclass "
        "Level and set name = '...'.")
  old = _LEVEL_TYPES.get(cls.name)
  if old is not None and (old.__module__, old.__qualname__) != (cls.__module__,
                                                                cls.__qualname__):
    raise SparseFormatError(
        f"register_level: the level name {cls.name!r} is taken by {old.__qualname__}; got "
        f"{cls.__qualname__}. Choose another name.")
  _LEVEL_TYPES[cls.name] = cls
  return cls


def level_type(name: str) -> type:
  """The level class registered as ``name``.

  Raises:
    SparseFormatError: no level type has that name.
  """
  if name not in _LEVEL_TYPES:
    raise SparseFormatError(
        f"Level: unknown level type; got kind={name!r}, expected one of "
        f"{tuple(_LEVEL_TYPES)}.")
  return _LEVEL_TYPES[name]


def level_types() -> tuple[str, ...]:
  """Names of the registered level types."""
  return tuple(_LEVEL_TYPES)


# -- host check helpers shared by level types -------------------------------------------------
def short(a, n: int = 8) -> str:
  """``[v0, v1, ..., ...]``: the first ``n`` values of an integer array, for messages."""
  a = np.asarray(a)
  body = ", ".join(str(int(v)) for v in a[:n])
  return f"[{body}{', ...' if a.size > n else ''}]"


def first_duplicate(rows):
  """The first repeated row (as a tuple of ints) of a 2-D array, or None."""
  if len(rows) < 2:
    return None
  srt = rows[np.lexsort(rows.T[::-1])]
  dup = np.all(srt[1:] == srt[:-1], axis=1)
  return tuple(int(v) for v in srt[int(np.argmax(dup))]) if dup.any() else None


def check_coordinates(crd, live, size: int, k: int, func: str, where: str) -> None:
  """Coordinates in use lie in ``[0, size)``; padding positions hold ``size``."""
  crd = np.asarray(crd)
  bad = live & ((crd < 0) | (crd >= size))
  if np.any(bad):
    i = int(np.argmax(bad))
    raise SparseFormatError(
        f"{func}: coordinate out of range at level {k}{where}, position {i}: got "
        f"{int(crd[i])}, expected 0 <= crd < {size}. Fix the indices or the shape.")
  if np.any(crd[~live] != size):
    first = int(np.argmax(~live))
    raise SparseFormatError(
        f"{func}: padding positions of level {k}{where} (from {first} on) must hold the "
        f"dimension size {size}; got {short(crd[~live])}.")


def check_segments(crd, parent, lvl: Level, k: int, func: str, where: str) -> None:
  """Within each parent segment (positions in use, in order): sorted if ordered, no repeats
  if unique."""
  if len(crd) < 2:
    return
  same = parent[1:] == parent[:-1]
  step = np.sign(crd[1:].astype(np.int64) - crd[:-1])
  if lvl.ordered and np.any(same & (step < 0)):
    i = int(np.argmax(same & (step < 0))) + 1
    raise SparseFormatError(
        f"{func}: coordinates of level {k}{where} are unsorted within a segment at position "
        f"{i} ({int(crd[i - 1])} then {int(crd[i])}), but the level is ordered. Sort them "
        f"or use {lvl.name}(ordered=False).")
  if lvl.unique and first_duplicate(np.stack([parent, crd], 1)) is not None:
    raise SparseFormatError(
        f"{func}: repeated coordinate within a segment of level {k}{where}, but the level is "
        f"unique. Sum duplicates or use {lvl.name}(unique=False).")
