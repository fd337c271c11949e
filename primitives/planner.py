"""The planner: from an :class:`EinsumSpec`, a static :class:`Plan` of how to evaluate it.

Scorch's rule is *sparse loops outer, concordant with storage order*. The plan
fixes

* the **join order** of the sparse sources (the sparse operands, and the sampled
  output pattern, which always drives because only its entries can receive
  values): the first source is scanned; each later one is either *looked up*
  (all its batch and sparse indices are already bound and it is unique: at most
  one match per row, so no capacity is needed) or *expanded* (it binds new
  indices: a join whose size is data dependent, bounded by ``spec.work``);
* the **loop order**: the driver's batch indices, its levels in storage order,
  then indices bound by later sources, then dense indices. The kernel planner
  (:mod:`.plan`) nests its level loops in this order (transposing the driver when
  its order conflicts with the output's), and records the rest of its decisions
  in the loop-nest IR (:mod:`.loopnest`).

How the output is assembled (dense, sampled, a new pattern) is ``spec.out_kind``.

Example:
  >>> from jscorch.primitives.layout import Layout
  >>> from jscorch.primitives.formats import CSR
  >>> from jscorch.primitives.einsum_spec import EinsumSpec, Operand
  >>> spec = EinsumSpec((Operand((0, 1), Layout(CSR, (3, 4), 5)), Operand((1, 2))),
  ...                   out=(0, 2), sizes=((0, 3), (1, 4), (2, 6)))
  >>> make_plan(spec)
  Plan(steps=(('scan', 0),), loop_order=(0, 1, 2))
"""
from __future__ import annotations

import dataclasses
import functools

from .einsum_spec import DENSE_OUT, SAMPLED_OUT, EinsumSpec, Operand

PATTERN = -1     # the sampled output pattern, as a join source


@dataclasses.dataclass(frozen=True)
class Plan:
  """How to evaluate an einsum (static, hashable).

  Attributes:
    steps: ``(mode, source)`` pairs; mode is ``"scan"`` (first), ``"lookup"`` or
      ``"expand"``; source is an operand number or ``PATTERN``.
    loop_order: index ids, outermost first.
  """
  steps: tuple[tuple[str, int], ...]
  loop_order: tuple[int, ...]

  @property
  def expands(self) -> bool:
    """True when some join is data-dependent in size (needs ``spec.work``)."""
    return any(mode == "expand" for mode, _ in self.steps)


def source_operand(spec: EinsumSpec, source: int) -> Operand:
  return spec.out_operand if source == PATTERN else spec.operands[source]


def _storage_bound(op: Operand) -> tuple[int, ...]:
  """Bound indices in storage order: batch dims, then levels by mode ordering."""
  lay = op.layout
  batch = op.indices[:lay.n_batch]
  sparse = op.indices[lay.n_batch:lay.n_batch + lay.n_sparse]
  return batch + tuple(sparse[d] for d in lay.format.mode_ordering)


def _rank(spec: EinsumSpec, source: int) -> int:
  """Tie-break order of sources (see ``EinsumSpec.ranks``)."""
  return spec.source_ranks[source]


@functools.lru_cache(maxsize=4096)
def make_plan(spec: EinsumSpec) -> Plan:
  """Chooses the join order and the loop order for ``spec``.

  Without ``spec.ranks`` the join order is chosen (most bound indices first, then
  lookups, then the source sharing most bound indices); with ranks it is the rank
  order (see :func:`pinned`), each source looked up when it can be.
  """
  sources = [k for k, op in enumerate(spec.operands) if op.sparse]
  if spec.out_kind == SAMPLED_OUT:
    sources.append(PATTERN)
  assert sources, "an einsum without sparse operands is a plain jnp.einsum"
  bound_of = {s: set(source_operand(spec, s).bound) for s in sources}
  rank = functools.partial(_rank, spec)
  if spec.ranks is not None:
    sources.sort(key=rank)
  first = sources[0] if spec.ranks is not None else \
      min(sources, key=lambda s: (-len(bound_of[s]), rank(s)))
  sources.remove(first)
  steps = [("scan", first)]
  bound = list(dict.fromkeys(_storage_bound(source_operand(spec, first))))
  while sources:
    lookups = [s for s in sources if bound_of[s] <= set(bound)
               and source_operand(spec, s).layout.format.unique]
    if spec.ranks is not None:
      s = sources[0]
      mode = "lookup" if s in lookups else "expand"
    elif lookups:
      s, mode = min(lookups, key=rank), "lookup"
    else:
      s = min(sources, key=lambda s: (-len(bound_of[s] & set(bound)), rank(s)))
      mode = "expand"
    sources.remove(s)
    steps.append((mode, s))
    bound += [i for i in _storage_bound(source_operand(spec, s)) if i not in bound]
  rest = [i for op in spec.operands for i in op.indices if i not in bound] + \
      [i for i in spec.out if i not in bound]
  loop_order = tuple(bound) + tuple(dict.fromkeys(rest))
  return Plan(tuple(steps), loop_order)


def pinned(spec: EinsumSpec) -> EinsumSpec:
  """``spec`` with ``ranks`` fixing its current join order (unchanged if already set).

  The capacity ``work`` bounds the joins of one particular order. Rules that derive
  einsums (tangents, transposes, batched einsums) pin the order first, so a derived
  einsum joins the forward's sources in the forward's order and the same ``work``
  suffices: sources it adds (a sparse result's pattern, sampled by the tangent)
  rank after them and join last, by lookup. Non-sources rank last, by position.
  """
  n_sources = sum(op.sparse for op in spec.operands) + (spec.out_kind != DENSE_OUT)
  if spec.ranks is not None or n_sources < 2:      # one source: no order to keep
    return spec
  order = [s for _, s in make_plan(spec).steps]
  n = len(spec.operands)
  slots = [*range(n), PATTERN]
  ranks = tuple(order.index(s) if s in order else len(order) + k for k, s in enumerate(slots))
  return spec.replace(ranks=ranks)
