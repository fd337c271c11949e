"""Pattern union and concatenation of sparse operands, as compositions (portable).

``A + B`` for two sparse operands stores every coordinate stored by either, once:
the coordinates and values of both are concatenated and handed to
:func:`convert.from_coordinates`, which sorts them and sums duplicates. The value
path is a gather / scatter-add (linear), so JAX derives exact jvp, transpose and
batching rules, and the gradient reaches both operands' values; the index path is
integer. Padding (coordinates out of range) stays padding.

Concatenation along a sparse dimension is the same composition with the second
operand's coordinates shifted by the first one's size.

Example:
  >>> import jax.numpy as jnp
  >>> from jscorch.primitives import convert
  >>> from jscorch.primitives.formats import CSR
  >>> from jscorch.primitives.layout import Layout
  >>> a = Layout(CSR, (2, 3), 2); b = Layout(CSR, (2, 3), 2)
  >>> ia = (jnp.array([0, 1, 2]), jnp.array([0, 2]))    # (0, 0) and (1, 2)
  >>> ib = (jnp.array([0, 1, 2]), jnp.array([1, 2]))    # (0, 1) and (1, 2)
  >>> union_size([(a, ia), (b, ib)])
  3
  >>> out = Layout(CSR, (2, 3), 3)
  >>> data, indices = union(out, [(a, jnp.array([1., 2.]), ia), (b, jnp.array([3., 4.]), ib)],
  ...                       func="add")
  >>> data, indices[1]
  (Array([1., 3., 6.], dtype=float32), Array([0, 1, 2], dtype=int32))
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import convert
from .formats import Format
from .layout import Layout

Part = tuple     # (Layout, data, indices)


def canonical_format(fmt: Format) -> Format:
  """``fmt`` with every level ordered and the last level unique (duplicates merged).

  This is the format of a union or concatenation result: a non-unique input
  format such as unordered COO comes back as plain COO.

  Example:
    >>> from jscorch.primitives.formats import compressed, singleton
    >>> canonical_format(Format(compressed(ordered=False, unique=False),
    ...                         singleton(ordered=False, unique=False)))
    Format(compressed(nonunique), singleton)
  """
  if not fmt.levels:
    return fmt
  levels = [lvl(ordered=True) for lvl in fmt.levels[:-1]]
  levels.append(fmt.levels[-1](ordered=True, unique=True))
  return fmt.replace(levels=tuple(levels))


def logical_coordinates(lay: Layout, indices) -> jax.Array:
  """`[*batch, nse, n_sparse]` logical coordinates of every leaf (padding: the sizes)."""
  return convert.storage_to_logical(lay, convert.leaf_coordinates(lay, indices))


def _shifted(lay: Layout, indices, offset: Sequence[int] | None, idt) -> jax.Array:
  coords = logical_coordinates(lay, indices).astype(idt)
  if offset is None or not any(offset):
    return coords
  sizes = jnp.asarray(lay.sparse_shape, idt)
  valid = jnp.all(coords < sizes, axis=-1, keepdims=True)
  # Padding must stay out of range after the shift: send it far past every size.
  big = jnp.asarray(np.iinfo(np.dtype(idt)).max // 2, idt)
  return jnp.where(valid, coords + jnp.asarray(offset, idt), big)


def union(out: Layout, parts: Sequence[Part], *, func: str,
          offsets: Sequence[Sequence[int] | None] | None = None):
  """Level buffers (in ``out``) of the sum of sparse operands over the union of their patterns.

  Args:
    out: the result layout; its format should be unique (see
      :func:`canonical_format`) so duplicates are merged, and ``out.nse`` at least
      the number of distinct coordinates (overflow raises eagerly, poisons under jit).
    parts: ``(layout, data, indices)`` per operand; same batch and block shapes as
      ``out``, sparse shapes fitting into ``out`` once shifted.
    func: the public function name, for capacity errors.
    offsets: per part, a shift of its logical sparse coordinates (concatenation),
      or None.

  Returns:
    ``(data, indices)`` of ``out``; values at equal coordinates are summed.
  """
  offsets = offsets or [None] * len(parts)
  idt = out.index_dtype
  nb = out.n_batch
  coords = [_shifted(lay, idx, off, idt) for (lay, _, idx), off in zip(parts, offsets)]
  # Under vmap a part may be unbatched while another is batched; both have rank
  # n_batch + 2 here, so a plain concatenate along the entry axis is enough.
  coords = jnp.concatenate(coords, axis=nb)
  data = jnp.concatenate([d for _, d, _ in parts], axis=nb)
  storage = convert.logical_to_storage(out, coords)
  return convert.from_coordinates(out, storage, data, func=func)


def union_size(parts: Sequence[tuple[Layout, tuple]],
               offsets: Sequence[Sequence[int] | None] | None = None) -> int:
  """Exact capacity of :func:`union` on concrete index buffers.

  Args:
    parts: ``(layout, indices)`` per operand (index buffers must be concrete).
    offsets: as in :func:`union`.

  Returns:
    The largest number of distinct in-range coordinates of any batch element.
  """
  offsets = offsets or [None] * len(parts)
  host = []
  for (lay, idx), off in zip(parts, offsets):
    # Concrete buffers closed over by a jit-traced function still trace unless forced.
    with jax.ensure_compile_time_eval():
      c = np.asarray(logical_coordinates(lay, idx)).astype(np.int64)
    valid = np.all(c < np.asarray(lay.sparse_shape), axis=-1)
    if off is not None:
      c = c + np.asarray(off, np.int64)
    host.append((c.reshape((-1,) + c.shape[-2:]), valid.reshape(-1, c.shape[-2])))
  n_batch_total = host[0][0].shape[0]
  best = 0
  for b in range(n_batch_total):
    rows = np.concatenate([c[b][v[b]] for c, v in host], axis=0)
    if len(rows):
      best = max(best, len(np.unique(rows, axis=0)))
  return best
