"""Operand orientation: the axis order of an einsum's dense operands and output.

A generated kernel vectorises over one *free* index (an index no sparse operand
binds) only when it is the contiguous last axis of the output and of every dense
operand holding it (:meth:`plan._Planner.vector_mode`). The same product written
with other axis orders — ``x @ W`` with a sparse ``W`` (the free index ``i`` leads
``x`` and the output) against ``(W.T @ x.T).T`` — would otherwise get a scalar
kernel striding through memory, many times slower. The planner therefore chooses
the orientation itself: :func:`orient` returns the spec with that index moved last
in the dense operands and the output, and the permutations that make it so; the
lowering transposes the dense arrays (memory-bound XLA transposes) around the
kernel of the oriented spec. Sparse operands are never permuted.

Where the sparse operands are small next to the dense arrays (a pruned weight times a
batch of activations), :func:`tiling` stages instead: one kernel runs the oriented
spec tile by tile over the free index, copying each tile of the dense arrays into a
contiguous scratch in cache and the output tile back (``loopnest.Stage``), so the
transposes cost no extra passes over memory nor extra XLA operations. The price is one
pass over the sparse structure per tile, which bounds when it pays (:data:`RESTAGE`).

Example:
  >>> from jscorch.primitives.layout import Layout
  >>> from jscorch.primitives.formats import CSR
  >>> from jscorch.primitives.einsum_spec import EinsumSpec, Operand
  >>> # x @ W: x [8, 5] dense (ids 0, 1), W [5, 6] CSR (ids 1, 2)
  >>> spec = EinsumSpec((Operand((0, 1)), Operand((1, 2), Layout(CSR, (5, 6), 9))),
  ...                   out=(0, 2), sizes=((0, 8), (1, 5), (2, 6)))
  >>> o = orient(spec)
  >>> o.spec.operands[0].indices, o.spec.out, o.operand_perms, o.out_perm
  ((1, 0), (2, 0), ((1, 0), None), (1, 0))
"""
from __future__ import annotations

import dataclasses
import math

from .einsum_spec import DENSE_OUT, SAMPLED_OUT, EinsumSpec

TILE_VECTORS = 8   # vector registers per tile of a staged kernel (its accumulators)
RESTAGE = 1        # staging pays while the repeated passes over the sparse structure
                   # (from cache) read at most this many times the dense arrays' bytes


@dataclasses.dataclass(frozen=True)
class Orientation:
  """An oriented spec and how to get there.

  Attributes:
    spec: the einsum with permuted dense operands and output.
    index: the free index moved last.
    operand_perms: per operand, the ``jnp.transpose`` permutation of its array (None:
      unchanged; sparse operands are always None).
    out_perm: the permutation taking the oriented (dense) output back to ``spec``'s
      order, or None when the output keeps its order.
  """
  spec: EinsumSpec
  index: int
  operand_perms: tuple[tuple[int, ...] | None, ...]
  out_perm: tuple[int, ...] | None


@dataclasses.dataclass(frozen=True)
class Tiling:
  """An oriented spec run tile by tile (:func:`tiling`).

  Attributes:
    spec: the oriented spec with the free index's size set to ``tile``: the kernel body.
    extent: the free index's size.
    tile: positions of the free index per tile.
    operands: per operand, the ``(outer, inner)`` sizes around the free index of a
      staged dense array (viewed `[outer, extent, inner]`), or None (not staged).
    out: the same view of a dense output; None for an output without the free index
      (summed over the tiles).
  """
  spec: EinsumSpec
  extent: int
  tile: int
  operands: tuple[tuple[int, int] | None, ...]
  out: tuple[int, int] | None


def _around(ids: tuple[int, ...], r: int, spec: EinsumSpec) -> tuple[int, int]:
  """The sizes of the axes before and after ``r`` in an array of index ids ``ids``."""
  at = ids.index(r)
  return (math.prod(spec.size(i) for i in ids[:at]),
          math.prod(spec.size(i) for i in ids[at + 1:]))


def tiling(spec: EinsumSpec, turned: Orientation, itemsize: int, lanes: int) -> Tiling | None:
  """How to run ``turned`` (an orientation of ``spec``) as one staged kernel, or None when
  the transposes should stay XLA's: sparse operands so large that a pass over them per
  tile costs more than :data:`RESTAGE` times the dense arrays' bytes, or stored values
  along the free index. An output without the free index (it is summed: a weight's
  gradient sampled at its pattern) is summed over the tiles.

  Example:
    >>> from jscorch.primitives.layout import Layout
    >>> from jscorch.primitives.formats import CSR
    >>> from jscorch.primitives.einsum_spec import EinsumSpec, Operand
    >>> # x @ W: x [256, 784] dense, W [784, 512] CSR with 4,014 entries
    >>> spec = EinsumSpec((Operand((0, 1)), Operand((1, 2), Layout(CSR, (784, 512), 4014))),
    ...                   out=(0, 2), sizes=((0, 256), (1, 784), (2, 512)))
    >>> t = tiling(spec, orient(spec), itemsize=4, lanes=8)
    >>> t.tile, t.spec.size(0), t.operands, t.out
    (64, 64, ((1, 784), None), (1, 512))
  """
  r = turned.index
  if any(op.sparse and r in op.block for op in spec.operands) or (
      spec.out_kind == SAMPLED_OUT and r in spec.out_operand.block):
    return None                 # (stored values along the free index: no tile of them)
  extent, tile = spec.size(r), TILE_VECTORS * lanes
  dense = [_around(op.indices, r, spec) if not op.sparse and r in op.indices else None
           for op in spec.operands]
  out = _around(spec.out, r, spec) if spec.out_kind == DENSE_OUT and r in spec.out else None
  dense_bytes = itemsize * extent * sum(a * b for a, b in filter(None, [*dense, out]))
  sampled = [spec.out_layout] if spec.out_kind == SAMPLED_OUT else []
  structure_bytes = sum(itemsize * math.prod(lay.data_shape) + 4 * len(lay.format.levels) *
                        math.prod(lay.batch_shape) * lay.nse
                        for lay in [op.layout for op in spec.operands if op.sparse] + sampled)
  if (-(-extent // tile) - 1) * structure_bytes > RESTAGE * dense_bytes:
    return None
  sizes = tuple((i, tile if i == r else n) for i, n in spec.sizes)
  return Tiling(turned.spec.replace(sizes=sizes), extent, tile, tuple(dense), out)


def free_indices(spec: EinsumSpec) -> list[int]:
  """Indices that no sparse operand (nor a sampled output's pattern) binds, in first-use
  order."""
  bound = {i for op in spec.operands if op.sparse for i in op.bound}
  if spec.out_kind == SAMPLED_OUT:
    bound |= set(spec.out_operand.bound)
  used = [i for op in spec.operands for i in op.indices] + list(spec.out)
  return [i for i in dict.fromkeys(used) if i not in bound]


def _last(ids: tuple[int, ...], r: int) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
  """``ids`` with ``r`` moved last, and the permutation doing it (None: already last)."""
  if r not in ids or ids[-1] == r:
    return ids, None
  perm = tuple(k for k, i in enumerate(ids) if i != r) + (ids.index(r),)
  return tuple(ids[k] for k in perm), perm


def orient(spec: EinsumSpec) -> Orientation | None:
  """``spec`` with its one free index last in the dense operands and a dense output, or
  None when there is nothing to change (already so, no sparse operand, not one free
  index, a sparse operand's block holding it elsewhere, a sparse output)."""
  if spec.out_kind not in (DENSE_OUT, SAMPLED_OUT) or (
      spec.out_kind == DENSE_OUT and not any(op.sparse for op in spec.operands)):
    return None
  free = free_indices(spec)
  if len(free) != 1:
    return None
  r = free[0]
  if any(op.indices.count(r) > 1 for op in spec.operands) or spec.out.count(r) > 1:
    return None
  if any(op.sparse and r in op.block and op.block[-1] != r for op in spec.operands):
    return None
  if spec.out_kind == SAMPLED_OUT and r in spec.out_operand.block and \
      spec.out_operand.block[-1] != r:
    return None
  operands, perms = [], []
  for op in spec.operands:
    ids, perm = (op.indices, None) if op.sparse else _last(op.indices, r)
    operands.append(dataclasses.replace(op, indices=ids))
    perms.append(perm)
  out, out_perm = (spec.out, None) if spec.out_kind != DENSE_OUT else _last(spec.out, r)
  if out_perm is None and all(p is None for p in perms):
    return None
  back = None if out_perm is None else tuple(out_perm.index(k) for k in range(len(out_perm)))
  return Orientation(spec.replace(operands=tuple(operands), out=out), r, tuple(perms), back)
