"""The CPU kernel of ``jscorch_structure``: generated C behind the typed XLA FFI.

One C function per :class:`~.plan.StructurePlan`, with the formats, sizes and
capacities baked in as constants: the plan's loop nest
(:func:`~.convert_loops.lower`, a :class:`~jscorch.primitives.loopnest.Assembly`)
printed by ``backends/c/convert.py``. Per batch element it

1. walks every entry's coordinates in the destination's storage order (from the
   coordinate list, or the source's levels), dropping entries with a coordinate out of
   range (padding);
2. sorts the entries: a counting sort by the first level (CSR -> CSC: one histogram /
   prefix-sum / scatter), buckets of the most significant level each sorted by the
   rest, or one stable pass per level (16-bit radix digits for very large levels),
   skipping the passes the source's order already provides;
3. appends the sorted entries to each level (``pos`` counts, ``crd``), merging equal
   coordinates where the destination is unique -- or, for an order-preserving
   conversion, only counts ``pos`` and copies the ``crd`` the source lacks.

It computes integer structure only -- with duplicates summed, ``dest[i]``, the output
slot of entry ``i`` (``nse`` for padding or overflow); otherwise ``source[s]``, the
entry of slot ``s`` (``n`` for none) -- and the values move outside it (a scatter-add, or
:func:`~jscorch.primitives.take.take`). Batch elements run in
parallel on XLA's thread pool.
"""
from __future__ import annotations

import collections
import functools

import jax

from .. import kernel_build
from ..backends.c import convert as printer
from ..settings import settings
from . import convert_loops
from .plan import StructurePlan

#: Plans that run the portable rule although kernels are on, by reason.
FALLBACKS = {
    "empty": "a dimension, capacity or batch of size zero",
    "no compiler": "no C compiler on this machine",
}

#: The most recent decisions, (plan, "kernel" | "portable" | fallback reason), newest last.
last_decisions: collections.deque = collections.deque(maxlen=64)


@functools.lru_cache(maxsize=256)
def _kernel(plan: StructurePlan):
  return convert_loops.lower(plan)


def kernel_name(plan: StructurePlan) -> str:
  return _kernel(plan).name


def generate(plan: StructurePlan) -> str:
  """The C source of ``plan``'s kernel (one exported FFI handler)."""
  return printer.generate(_kernel(plan))


def ensure_registered(plan: StructurePlan) -> str:
  """Builds (or loads from cache) and registers ``plan``'s kernel; returns its target name."""
  return kernel_build.ensure_registered(kernel_name(plan), lambda: generate(plan))


def _empty(plan: StructurePlan, batch: int) -> bool:
  lay = plan.dst
  sizes = [batch, plan.n, lay.nse, *lay.level_sizes, *lay.capacities]
  if plan.src is not None:
    sizes += [*plan.src.level_sizes, *plan.src.capacities]
  return any(s == 0 for s in sizes)


def lowering(portable_rule):
  """The CPU lowering rule: the generated kernel, else ``portable_rule``."""

  def rule(ctx, *args, plan: StructurePlan):
    choice = settings.lowering
    if choice != "portable" and kernel_build.compiler() is None:
      kernel_build.warn_no_compiler()
      last_decisions.append((plan, "no compiler"))
      return portable_rule(ctx, *args, plan=plan)
    if choice == "portable":
      last_decisions.append((plan, "portable"))
      return portable_rule(ctx, *args, plan=plan)
    batch = ctx.avals_out[-1].shape[0]
    if _empty(plan, batch):
      last_decisions.append((plan, "empty"))
      return portable_rule(ctx, *args, plan=plan)
    last_decisions.append((plan, "kernel"))
    return jax.ffi.ffi_lowering(ensure_registered(plan))(ctx, *args)

  return rule
