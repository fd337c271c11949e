"""The static description of one sparse einsum: operands, indices, output kind.

Indices are integer ids (not letters), so rules can always mint fresh ones. A
sparse operand lists one id per logical dimension ``(*batch, *sparse, *block)``;
a dense operand one id per axis. The output is one of

* ``"dense"``: an array over ``out`` indices;
* ``"sampled"``: values at a given pattern (``out_layout``), whose index buffers
  are extra inputs after the operands (SDDMM, ``A * X``, sparse gradients);
* ``"sparse"``: a new pattern with static capacity ``out_layout.nse`` (sparse ×
  sparse); the result is ``(data, *indices)``.

Flat inputs, in order: each operand's buffers (dense: the array; sparse: ``data``
then its index buffers), then the sampled pattern's index buffers.

Example:
  >>> from jscorch.primitives.layout import Layout
  >>> from jscorch.primitives.formats import CSR
  >>> spec = EinsumSpec((Operand((0, 1), Layout(CSR, (3, 4), 5)), Operand((1, 2))),
  ...                   out=(0, 2), sizes=((0, 3), (1, 4), (2, 6)))
  >>> spec.out_shape, spec.n_inputs
  ((3, 6), 4)
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from .layout import Layout

DENSE_OUT, SAMPLED_OUT, SPARSE_OUT = "dense", "sampled", "sparse"
PATTERN = -1     # the sampled output pattern, as a source (``planner.PATTERN``)


@dataclasses.dataclass(frozen=True)
class Operand:
  """One einsum operand: its index ids and, for a sparse operand, its layout."""
  indices: tuple[int, ...]
  layout: Layout | None = None

  @property
  def sparse(self) -> bool:
    return self.layout is not None

  @property
  def n_buffers(self) -> int:
    return 1 + len(self.layout.index_shapes) if self.sparse else 1

  @property
  def bound(self) -> tuple[int, ...]:
    """Ids of the batch and sparse dimensions (those fixed by each stored entry)."""
    if not self.sparse:
      return ()
    lay = self.layout
    return self.indices[:lay.n_batch + lay.n_sparse]

  @property
  def block(self) -> tuple[int, ...]:
    """Ids of the dense block dimensions (dense operands: all)."""
    if not self.sparse:
      return self.indices
    return self.indices[self.layout.n_batch + self.layout.n_sparse:]


@dataclasses.dataclass(frozen=True)
class EinsumSpec:
  """A static, hashable einsum description (a primitive parameter).

  Attributes:
    operands: the operands.
    out: output index ids, in output dimension order.
    sizes: ``(id, size)`` pairs for every index id.
    out_kind: ``"dense"``, ``"sampled"`` or ``"sparse"``.
    out_layout: the output layout for sampled and sparse outputs.
    work: capacity of the intermediate join of sparse operands that contract
      against each other (portable lowering only); 0 when no expansion happens.
    ranks: the join order: a rank for each operand and, last, for the sampled
      pattern; sparse sources join by increasing rank (None: the planner chooses
      the order). Rules that derive einsums pin the order first
      (:func:`jscorch.primitives.planner.pinned`) and carry the ranks along when
      roles swap (a transpose turns an operand into the pattern), so every
      derived einsum joins its sparse sources in the forward's order and needs
      the same ``work``.
    same_pattern: groups (sorted tuples, each of two or more) of sparse sources
      whose index buffers are the *same* buffers: operand numbers, and ``-1``
      (:data:`PATTERN`) for the sampled output pattern. Decided at bind time from
      tracer identity (:func:`with_shared_patterns`) and carried along by the rules
      that derive einsums, so lowerings read it from the spec instead of comparing
      their inputs (which keeps the lowering cacheable). Sources in one group with
      the same storage structure iterate as one pattern.
  """
  operands: tuple[Operand, ...]
  out: tuple[int, ...]
  sizes: tuple[tuple[int, int], ...]
  out_kind: str = DENSE_OUT
  out_layout: Layout | None = None
  work: int = 0
  ranks: tuple[int, ...] | None = None
  same_pattern: tuple[tuple[int, ...], ...] = ()

  @property
  def source_ranks(self) -> tuple[int, ...]:
    return self.ranks if self.ranks is not None else tuple(range(len(self.operands) + 1))

  def size(self, index: int) -> int:
    return dict(self.sizes)[index]

  @property
  def out_shape(self) -> tuple[int, ...]:
    return tuple(self.size(i) for i in self.out)

  @property
  def out_operand(self) -> Operand:
    """The output described as an operand (sampled/sparse outputs carry a layout)."""
    return Operand(self.out, self.out_layout)

  @property
  def n_inputs(self) -> int:
    n = sum(op.n_buffers for op in self.operands)
    if self.out_kind == SAMPLED_OUT:
      n += len(self.out_layout.index_shapes)
    return n

  def split_inputs(self, flat: Sequence) -> tuple[list, tuple]:
    """Splits flat inputs into per-operand buffer lists and the sampled pattern."""
    assert len(flat) == self.n_inputs, (len(flat), self.n_inputs)
    groups, at = [], 0
    for op in self.operands:
      groups.append(list(flat[at:at + op.n_buffers]))
      at += op.n_buffers
    return groups, tuple(flat[at:])

  def shares_pattern(self, s: int, t: int) -> bool:
    """Whether sources ``s`` and ``t`` (operand numbers or ``PATTERN``) have the same
    index buffers (always true of a source and itself)."""
    return s == t or any(s in g and t in g for g in self.same_pattern)

  def index_buffers(self, flat: Sequence, source: int) -> tuple:
    """The index buffers of ``source`` (an operand number or ``PATTERN``) in ``flat``."""
    groups, pattern = self.split_inputs(flat)
    return tuple(pattern) if source == PATTERN else tuple(groups[source][1:])

  def remap_patterns(self, image: dict) -> tuple[tuple[int, ...], ...]:
    """``same_pattern`` of a derived einsum: each source ``s`` becomes ``image[s]``,
    sources missing from ``image`` (or mapped to None) leave their group; groups of
    fewer than two go."""
    return _normal_groups([image.get(s) for s in g] for g in self.same_pattern)

  def replace(self, **changes) -> EinsumSpec:
    return dataclasses.replace(self, **changes)

  def fresh_index(self) -> int:
    return max(i for i, _ in self.sizes) + 1 if self.sizes else 0

  def __str__(self):
    def name(op):
      letters = "".join(_letter(i) for i in op.indices)
      return f"{letters}:{op.layout.format!r}" if op.sparse else letters
    ins = ",".join(name(op) for op in self.operands)
    return f"{ins}->{''.join(_letter(i) for i in self.out)} [{self.out_kind}]"


def sources(spec: EinsumSpec) -> list[int]:
  """The sparse sources of ``spec``: its sparse operands, then ``PATTERN`` if sampled."""
  out = [k for k, op in enumerate(spec.operands) if op.sparse]
  return out + [PATTERN] if spec.out_kind == SAMPLED_OUT else out


def with_shared_patterns(spec: EinsumSpec, flat: Sequence) -> EinsumSpec:
  """``spec`` with ``same_pattern`` also grouping the sources whose index buffers in
  ``flat`` are the same objects (tracers or arrays; compared by identity, never by
  value, so nothing is traced). A non-unique source shares with nothing: entry ``k`` of
  one factor times entry ``k`` of another is not the product of the summed duplicates."""
  groups = [list(g) for g in spec.same_pattern]
  found: list[tuple[int, tuple]] = []
  for s in sources(spec):
    layout = spec.out_layout if s == PATTERN else spec.operands[s].layout
    if not layout.format.unique:
      continue
    bufs = spec.index_buffers(flat, s)
    for rep, rep_bufs in found:
      if len(bufs) == len(rep_bufs) and all(x is y for x, y in zip(bufs, rep_bufs)):
        groups.append([rep, s])
        break
    else:
      found.append((s, bufs))
  new = _normal_groups(groups)
  return spec if new == spec.same_pattern else spec.replace(same_pattern=new)


def _normal_groups(groups) -> tuple[tuple[int, ...], ...]:
  """Merges overlapping groups (dropping None members); sorted, singletons dropped."""
  merged: list[set] = []
  for g in groups:
    g = {s for s in g if s is not None}
    for m in [m for m in merged if m & g]:
      merged.remove(m)
      g |= m
    merged.append(g)
  return tuple(sorted(tuple(sorted(m)) for m in merged if len(m) > 1))


def _letter(i: int) -> str:
  chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
  return chars[i] if i < len(chars) else f"<{i}>"
