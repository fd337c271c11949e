"""The conversion kernel's loop nest: a :class:`~.plan.StructurePlan` as a structure kernel
of the loop-nest IR (:class:`~jscorch.primitives.loopnest.Assembly`, sizes constant).

:func:`lower` writes every decision of the conversion into the IR; the numpy interpreter
(:func:`jscorch.primitives.interpret.run_assembly`) runs it. Per batch element, one of:

* **passthrough** (entries keep their slots): a walk over the source, in chunks,
  counting entries per parent of the entry level (:class:`~.loopnest.Histogram`) and
  copying the computed ``crd`` (:class:`~.loopnest.Copy`; runs of entries at once where
  those are constant over the innermost source level), the unwritten entries padded
  (:class:`~.loopnest.Pad`), ``pos`` from the counts (:class:`~.loopnest.Offsets`);
* **stream** (already in order): every entry appended (:class:`~.loopnest.Emit`);
* **transpose** (a dense level over a compressed one, sorted by the first): a counting
  sort -- :class:`~.loopnest.Tally`, :class:`~.loopnest.Offsets` (= ``pos``),
  :class:`~.loopnest.Scatter` -- and the padding (:class:`~.loopnest.Tail`);
* **buckets** (the most significant key's range small): a counting sort by it into
  buckets carrying the rows (:class:`~.loopnest.Bucket`), each bucket sorted by the rest
  (:class:`~.loopnest.SortBuckets`), then appended;
* **radix**: the rows gathered (:class:`~.loopnest.Gather`), one stable pass per key
  (:class:`~.loopnest.RadixSort`), then appended.

Example:
  >>> from jscorch.primitives.formats import CSR, CSC
  >>> from jscorch.primitives.layout import Layout
  >>> from jscorch.primitives.structure.plan import make_plan
  >>> k = lower(make_plan(Layout(CSC, (4, 5), 6), Layout(CSR, (4, 5), 6)))
  >>> [type(s).__name__ for s in k.body]
  ['Begin', 'Loop', 'Offsets', 'Loop', 'Tail']
  >>> [o.name for o in k.outputs]
  ['pos1', 'crd1', 'source', 'count']
"""
from __future__ import annotations

from .. import loopnest as ir
from ..layout import Layout
from .plan import StructurePlan, entry_level, level_codes

#: Entries (one batch element) from which a walk is split over threads.
SPLIT_AT = 1 << 15

def _levels(lay: Layout, prefix: str, first: int, arg: bool):
  """The levels of ``lay`` and their buffers (``prefix`` ``""`` or ``"s"``), numbered from
  ``first`` in leaf order as arguments (``arg``) or results."""
  levels, arrays, i = [], [], first
  dtype = "source" if arg else "index"
  for k, lvl in enumerate(lay.format.levels):
    pos = crd = None
    pcap, cap = lay.parent_capacity(k), lay.capacities[k]
    if lvl.has_pos:
      pos = f"{prefix}pos{k}"
      arrays.append(ir.Array(pos, dtype, ir.Const(pcap + 1), **{"arg" if arg else "ret": i}))
      i += 1
    if lvl.has_crd:
      crd = f"{prefix}crd{k}"
      arrays.append(ir.Array(crd, dtype, ir.Const(cap), **{"arg" if arg else "ret": i}))
      i += 1
    levels.append(ir.Level(pos, crd, lay.level_sizes[k], cap, pcap, lvl.unique))
  return tuple(levels), arrays


def entries(plan: StructurePlan, runs: int = -1) -> ir.Entries:
  """The walk over one batch element's input entries."""
  sizes = tuple(plan.dst.level_sizes)
  if plan.src is None:
    return ir.Entries("coords", (), tuple(range(plan.n_levels)), sizes, plan.n, -1, SPLIT_AT)
  levels, _ = _levels(plan.src, "s", 0, True)
  return ir.Entries(None, levels, plan.dst_to_src, sizes, plan.n, runs, SPLIT_AT)


def _inputs(plan: StructurePlan) -> tuple[ir.Array, ...]:
  if plan.src is None:
    return (ir.Array("coords", "index", ir.Const(plan.n * plan.n_levels), arg=0),)
  return tuple(_levels(plan.src, "s", 0, True)[1])


def _runs(plan: StructurePlan) -> bool:
  """Passthrough with computed ``crd`` that all come from source levels above the source's
  entry level (constant over each innermost run), and a histogram keyed the same way."""
  if not plan.computed_levels:
    return False
  e_src = entry_level(plan.src)
  return all(plan.dst_to_src[k] < e_src for k in range(plan.entry_level))


def _passthrough(plan: StructurePlan):
  dst, e = plan.dst, plan.entry_level
  pcap, sizes = dst.parent_capacity(e), dst.level_sizes
  outputs = [ir.Array(f"pos{e}", "index", ir.Const(pcap + 1), ret=0)]
  outputs += [ir.Array(f"crd{k}", "index", ir.Const(dst.nse), ret=1 + i)
              for i, k in enumerate(plan.computed_levels)]
  copy = ir.Copy(tuple((f"crd{k}", k, sizes[k]) for k in plan.computed_levels), dst.nse)
  walk = entries(plan, entry_level(plan.src) if _runs(plan) else -1)
  body = (ir.Loop(walk, ir.Parallel.OUTER,
                  (ir.Histogram("hist", e, tuple(sizes[:e])), copy)),
          ir.Pad(copy),
          ir.Offsets("hist", 0, f"pos{e}", None, pcap, dst.nse))
  scratch = (ir.Array("hist", "int64", ir.Const(pcap)),)
  return outputs, scratch, body, "passthrough: entries keep their slots"


def _transpose(plan: StructurePlan) -> bool:
  kinds = level_codes(plan.dst)
  return plan.n_levels == 2 and plan.sort_levels == (0,) and kinds == (0, 1) and not plan.sums


def _sorted(plan: StructurePlan, builder: ir.Builder):
  """The statements of a sorting conversion, and its scratch."""
  n, width, walk = plan.n, plan.n_levels, entries(plan)
  sizes = plan.dst.level_sizes
  if _transpose(plan):
    rows, (_, crd_level) = sizes[0], builder.levels
    body = (ir.Begin(builder),
            ir.Loop(walk, ir.Parallel.OUTER, (ir.Tally("pos1", 0),)),
            ir.Offsets("pos1", 1, "pos1", "next", rows, crd_level.cap),
            ir.Loop(walk, ir.Parallel.OUTER,
                    (ir.Scatter("next", 0, "crd1", 1, crd_level.cap, "source", plan.dst.nse),)),
            ir.Tail("crd1", ir.Load("next", ir.Const(rows - 1)), crd_level.cap,
                    crd_level.size, "count"))
    return body, (ir.Array("next", "int64", ir.Const(rows + 1)),), "transpose: a counting sort"
  msd = plan.sort_levels[-1]
  count = ir.Array("m", "int64", ir.Const(1))
  rows = ir.Array("rows", "index", ir.Const(n * width))
  order = ir.Array("order", "entry", ir.Const(n))
  if 0 < sizes[msd] <= 4 * n + 1024:
    buckets = sizes[msd]
    sort = (ir.SortBuckets("rows", "order", "next", "m", buckets, plan.sort_levels[:-1], width),
            ) if len(plan.sort_levels) > 1 else ()
    body = (ir.Begin(builder),
            ir.Loop(walk, ir.Parallel.NONE, (ir.Tally("next", msd),)),
            ir.PrefixSum("next", ir.Const(buckets)),
            ir.Loop(walk, ir.Parallel.NONE,
                    (ir.Bucket("next", msd, "rows", "order", "m", buckets, width, n),)),
            *sort,
            ir.Loop(ir.SortedRows("rows", "order", "m", width, False), ir.Parallel.NONE,
                    (ir.Emit(builder),)),
            ir.Seal(builder))
    return body, (ir.Array("next", "int64", ir.Const(buckets + 1)), count, rows, order), \
        f"buckets of level {msd}, each sorted by levels {plan.sort_levels[:-1]}"
  hist_cap = max(2 * n, 1 << 16)
  body = (ir.Begin(builder),
          ir.Loop(walk, ir.Parallel.NONE, (ir.Gather("rows", "order", "m", width, n),)),
          ir.RadixSort("rows", "order", "m", plan.sort_levels,
                       tuple(sizes[k] for k in plan.sort_levels), width, hist_cap),
          ir.Loop(ir.SortedRows("rows", "order", "m", width, True), ir.Parallel.NONE,
                  (ir.Emit(builder),)),
          ir.Seal(builder))
  return body, (count, rows, order), f"radix passes by levels {plan.sort_levels}"


def lower(plan: StructurePlan) -> ir.Assembly:
  """The structure kernel of ``plan``: its buffers are the primitive's operands and results
  for one batch element (``batch``: the leading dimension of ``count``, or of the first
  result for a passthrough)."""
  dst = plan.dst
  if plan.passthrough:
    outputs, scratch, body, how = _passthrough(plan)
  else:
    levels, outputs = _levels(dst, "", 0, False)
    name = "dest" if plan.sums else "source"
    outputs.append(ir.Array(name, "index", ir.Const(plan.n if plan.sums else dst.nse),
                            ret=len(outputs)))
    outputs.append(ir.Array("count", "index", ir.Const(1), ret=len(outputs)))
    builder = ir.Builder(levels, name, "count", dst.nse, plan.n, plan.sums)
    if plan.sort_levels:
      body, scratch, how = _sorted(plan, builder)
    else:
      body = (ir.Begin(builder), ir.Loop(entries(plan), ir.Parallel.NONE, (ir.Emit(builder),)),
              ir.Seal(builder))
      scratch, how = (), "stream: already in order"
    body = tuple(body)
  src = "coordinates" if plan.src is None else f"{plan.src.format!r} {plan.src.shape} " \
      f"nse={plan.src.nse}"
  return ir.Assembly(
      inputs=_inputs(plan), outputs=tuple(outputs), scratch=tuple(scratch), sizes=(),
      batch=outputs[-1].name, body=tuple(body), index_dtype=str(dst.index_dtype),
      count_dtype=str(dst.index_dtype), value_dtype=None,
      notes=(("from", f"{src} ({plan.n} entries)"),
             ("to", f"{dst.format!r} {dst.shape} nse={dst.nse}"),
             ("sort", f"destination levels {plan.sort_levels} (least significant first)"),
             ("dups", "summed" if plan.sums else "kept"),
             ("plan", how)),
      source_dtype=str(plan.src.index_dtype if plan.src else dst.index_dtype),
      entry_dtype="int32" if plan.n < 2**31 - 1 else "int64")
