"""The static buffer layout of a sparse tensor: what buffers a format needs, and their shapes.

A :class:`Layout` combines a :class:`Format`, a full shape and the capacity ``nse``
(number of stored entries), all static. From them follow the capacity of every
level and the exact shape of every buffer:

* compressed level ``k``: ``pos`` `[*batch, cap[k-1] + 1]` and ``crd`` `[*batch, cap[k]]`;
* singleton level ``k``: ``crd`` `[*batch, cap[k]]`;
* dense level: no buffers;
* ``data``: `[*batch, nse, *block]`.

Each level type answers for its own buffers and capacity (``Level.buffers``,
``Level.capacity``, ``Level.buffer_shape``; see ``formats/level.py``). For the
built-in levels: a dense level multiplies its parent's capacity by its size; a
unique compressed level holds at most ``min(parent * size, nse)`` entries; a
non-unique compressed level and the last level hold ``nse``; a singleton level
has its parent's capacity. Unused positions are **padding**: coordinate equal to
the dimension size, ``pos`` flat (no leaves), value 0.

Example:
  >>> from jscorch.primitives.formats import DCSR
  >>> lay = Layout.make(DCSR, (4, 6), nse=5)
  >>> lay.capacities, [shape for _, _, shape in lay.index_shapes]
  ((4, 5), [(2,), (4,), (5,), (5,)])
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np

from ._errors import SparseFormatError
from .formats import Format

_INT32_MAX = np.iinfo(np.int32).max


def index_dtype_for(max_value: int, func: str = "jscorch") -> np.dtype:
  """The index dtype able to hold ``max_value``: int32, or int64 under ``jax_enable_x64``.

  Raises:
    SparseFormatError: when ``max_value`` overflows int32 and x64 is disabled.
  """
  if max_value < _INT32_MAX:
    return np.dtype(np.int32)
  if jax.config.jax_enable_x64:
    return np.dtype(np.int64)
  raise SparseFormatError(
      f"{func}: the index space overflows int32; got a dimension or capacity of "
      f"{max_value}, expected < {_INT32_MAX}. Enable 64-bit indices with "
      "jax.config.update('jax_enable_x64', True), or split the array.")


def block_view_shape(fmt: Format, shape: Sequence[int], func: str = "jscorch",
                     operand: str = "the array") -> tuple[int, ...]:
  """The block view's shape `[*batch, *grid, *block]` of a blocked format's array of
  logical shape `[*batch, *sparse]` (``shape`` as is for an unblocked format).

  Raises:
    SparseFormatError: a sparse dimension that is not a multiple of its block size
      (the message names ``func``, ``operand``, the shape, the block and the padded shape).

  Example:
    >>> from jscorch.primitives.formats import BSR
    >>> block_view_shape(BSR((2, 3)), (4, 9))
    (2, 3, 2, 3)
  """
  shape = tuple(int(s) for s in shape)
  if not fmt.blocks:
    return shape
  nb, blocks = len(shape) - len(fmt.blocks), fmt.blocks
  sparse = shape[nb:]
  if nb < 0 or any(d % b for d, b in zip(sparse, blocks)):
    padded = shape[:max(nb, 0)] + tuple(-(-d // b) * b for d, b in zip(sparse, blocks))
    raise SparseFormatError(
        f"{func}: {operand} has shape {shape}, whose sparse dimensions {sparse} are not "
        f"multiples of the block {blocks} of format {fmt!r}; expected each to divide evenly. "
        f"Pad {operand} with zeros to shape {padded} (e.g. jnp.pad), or choose a block that "
        "divides the shape.")
  return shape[:nb] + tuple(d // b for d, b in zip(sparse, blocks)) + blocks


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static layout of a sparse tensor (hashable; safe as a primitive parameter).

  Attributes:
    format: the :class:`Format`, with ``n_batch`` and ``n_dense`` filled in.
    shape: the full logical shape ``(*batch, *sparse, *block)``.
    nse: number of stored entries (the capacity of the last level).
  """
  format: Format
  shape: tuple[int, ...]
  nse: int

  @staticmethod
  def make(fmt: Format, shape: Sequence[int], nse: int, func: str = "jscorch") -> Layout:
    """Validates ``shape`` and ``nse`` against ``fmt`` and builds the layout."""
    shape = tuple(int(s) for s in shape)
    if fmt.blocks:
      raise SparseFormatError(
          f"{func}: a layout describes storage, and a blocked format {fmt!r} is stored as its "
          f"block view; got shape {shape}. Use the block view's format, fmt.storage, with the "
          "block view's shape [*batch, *grid, *block].")
    if len(shape) != fmt.ndim:
      raise SparseFormatError(
          f"{func}: shape {shape} has rank {len(shape)} but format {fmt!r} describes rank "
          f"{fmt.ndim}. Pass a shape with one entry per dimension.")
    if any(s < 0 for s in shape):
      raise SparseFormatError(f"{func}: shape must be non-negative; got {shape}.")
    if not isinstance(nse, (int, np.integer)) or nse < 0:
      raise SparseFormatError(f"{func}: nse must be a non-negative int; got nse={nse!r}.")
    lay = Layout(fmt, shape, int(nse))
    fixed = lay.fixed_nse
    if fixed is not None and nse != fixed:
      raise SparseFormatError(
          f"{func}: an all-dense (or level-less) format stores every coordinate; got "
          f"nse={nse}, expected {fixed}." if fmt.all_dense else
          f"{func}: the last level of format {fmt!r} stores a fixed number of entries; got "
          f"nse={nse}, expected {fixed}. Pass nse={fixed}.")
    index_dtype_for(max(shape + (int(nse) + 1,) + tuple(c + 1 for c in lay.capacities)), func)
    return lay

  @property
  def fixed_nse(self) -> int | None:
    """The capacity the format fixes for this shape, or None when any capacity will do: an
    all-dense (or level-less) format stores every coordinate; otherwise the last level may
    fix it (a dense last level stores its whole range under each parent entry)."""
    if self.format.all_dense:
      return math.prod(self.level_sizes)
    last = len(self.format.levels) - 1
    return self.format.levels[last].fixed_capacity(self.parent_capacity(last),
                                                   self.level_sizes[last])

  # -- dimension groups ---------------------------------------------------------------
  @property
  def n_batch(self) -> int:
    return self.format.n_batch

  @property
  def n_dense(self) -> int:
    return self.format.n_dense

  @property
  def n_sparse(self) -> int:
    return self.format.n_sparse

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return self.shape[:self.n_batch]

  @property
  def sparse_shape(self) -> tuple[int, ...]:
    """Sizes of the sparse dimensions in logical order."""
    return self.shape[self.n_batch:self.n_batch + self.n_sparse]

  @property
  def block_shape(self) -> tuple[int, ...]:
    return self.shape[self.n_batch + self.n_sparse:]

  @property
  def level_sizes(self) -> tuple[int, ...]:
    """Sizes of the sparse dimensions in storage (level) order."""
    sp = self.sparse_shape
    return tuple(sp[d] for d in self.format.mode_ordering)

  @property
  def index_dtype(self) -> np.dtype:
    return index_dtype_for(max(self.shape + (self.nse + 1,) +
                               tuple(c + 1 for c in self.capacities)))

  @property
  def capacities(self) -> tuple[int, ...]:
    """Number of positions of each level (the last one is ``nse``)."""
    caps, parent = [], 1
    levels = self.format.levels
    for k, (lvl, size) in enumerate(zip(levels, self.level_sizes)):
      cap = lvl.capacity(parent, size, self.nse, k == len(levels) - 1)
      caps.append(cap)
      parent = cap
    return tuple(caps)

  def parent_capacity(self, k: int) -> int:
    """Number of positions of level ``k``'s parent (1 for the first level)."""
    return self.capacities[k - 1] if k else 1

  @property
  def index_shapes(self) -> tuple[tuple[int, str, tuple[int, ...]], ...]:
    """``(level, "pos" | "crd", shape)`` for every index buffer, in leaf order."""
    out = []
    caps = self.capacities
    for k, lvl in enumerate(self.format.levels):
      for role in lvl.buffers:
        out.append((k, role, self.batch_shape + lvl.buffer_shape(
            role, self.parent_capacity(k), caps[k])))
    return tuple(out)

  @property
  def data_shape(self) -> tuple[int, ...]:
    return self.batch_shape + (self.nse,) + self.block_shape

  @property
  def dense_size(self) -> int:
    """Number of elements of the dense equivalent."""
    return math.prod(self.shape)

  def replace(self, **changes) -> Layout:
    return dataclasses.replace(self, **changes)

  def check_buffers(self, data, indices, func: str = "jscorch") -> None:
    """Checks buffer count, shapes and dtypes (static facts only).

    Raises:
      SparseFormatError: wrong number or shape of buffers.
      TypeError: non-integer index buffers.
    """
    expected = self.index_shapes
    if len(indices) != len(expected):
      raise SparseFormatError(
          f"{func}: format {self.format!r} needs {len(expected)} index buffers "
          f"({[f'{r}[{k}]' for k, r, _ in expected]}); got {len(indices)}.")
    for (k, role, shape), buf in zip(expected, indices):
      if tuple(buf.shape) != shape:
        raise SparseFormatError(
            f"{func}: {role} buffer of level {k} has shape {tuple(buf.shape)}, expected "
            f"{shape} for format {self.format!r}, shape {self.shape}, nse={self.nse}.")
      if not np.issubdtype(buf.dtype, np.integer):
        raise TypeError(
            f"{func}: {role} buffer of level {k} must have an integer dtype; got "
            f"{buf.dtype}. Cast the indices with .astype(jnp.int32).")
    if tuple(data.shape) != self.data_shape:
      raise SparseFormatError(
          f"{func}: data has shape {tuple(data.shape)}, expected {self.data_shape} "
          f"(*batch, nse, *block) for format {self.format!r} and shape {self.shape}.")
