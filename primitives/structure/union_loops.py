"""The union kernel's loop nest: a :class:`~jscorch.primitives.structure.union_kernel.UnionPlan`
as a structure kernel of the loop-nest IR (:class:`~jscorch.primitives.loopnest.Assembly`).

:func:`lower` writes every decision into the IR; the C printer
(``backends/c/assembly.py``) prints it and the numpy interpreter
(:func:`jscorch.primitives.interpret.run_assembly`) runs it. Per batch element:

1. :class:`~.loopnest.Unreached` — entries outside every row of a part go nowhere;
2. a count pass, parallel over the output rows: the :class:`~.loopnest.Union` of the
   parts' sorted row segments (TACO's merge lattice), counted per row
   (:class:`~.loopnest.Count`; two parts may count by a bitmap);
3. :class:`~.loopnest.PrefixSum` — the rows' starts;
4. a fill pass, the same union again: each coordinate is appended to the output level
   (:class:`~.loopnest.Append`) and linked to the parts' entries
   (:class:`~.loopnest.Link`: ``dest`` and ``src``) or, for ``jscorch_union_sum``,
   the parts' values are summed at its leaf (:class:`~.loopnest.Fold`);
5. :class:`~.loopnest.Finalize` — ``pos``, the count and the padding leaves.

Only what the C text depends on enters the IR — the number of parts, the dtypes and
which outputs exist; sizes, capacities and offsets are :class:`~.loopnest.Var` s read
at run time (:func:`params` and the buffers' dims), so one build serves every shape.

Example:
  >>> from jscorch.primitives.formats import CSR
  >>> from jscorch.primitives.layout import Layout
  >>> from jscorch.primitives.structure.union_kernel import UnionPlan
  >>> a = Layout(CSR, (2, 3), 2)
  >>> k = lower(UnionPlan(Layout(CSR, (2, 3), 3), (a, a), (None, None), "add"), "int32")
  >>> [type(s).__name__ for s in k.body]
  ['Unreached', 'Unreached', 'Loop', 'PrefixSum', 'Loop', 'Finalize']
  >>> [o.name for o in k.outputs]
  ['out_pos', 'out_crd', 'dest', 'count', 'src_0', 'src_1']
"""
from __future__ import annotations

import math

import numpy as np

from .. import loopnest as ir

#: Largest column count whose bitmap (cols / 8 bytes per chunk) the two-part count uses.
BITMAP_COLS = 1 << 22

#: Entries (all parts) from which a pass is split over threads.
SPLIT_AT = 32768

V = ir.Var


def params(plan) -> np.ndarray:
  """The run-time sizes the dims do not carry, int64 `[2 + 3 * n_parts]` (storage order):
  the output's columns, every part's columns, row offsets and column offsets, and the
  number of values per entry (block size)."""
  out = plan.out
  order = out.format.mode_ordering
  offs = [tuple(o) if o is not None else (0,) * out.n_sparse for o in plan.offsets]
  return np.asarray([out.level_sizes[1], *(l.level_sizes[1] for l in plan.parts),
                     *(int(o[order[0]]) for o in offs), *(int(o[order[1]]) for o in offs),
                     math.prod(out.block_shape)], np.int64)


def _sizes(n: int) -> tuple[ir.Size, ...]:
  """Where each run-time size comes from (the layout of :func:`params`)."""
  out = [ir.Size("rows", "out_pos", add=-1), ir.Size("nse", "out_crd"),
         ir.Size("cols", param=0), ir.Size("blk", param=1 + 3 * n)]
  for k in range(n):
    out += [ir.Size(f"rows_{k}", f"pos_{k}", add=-1), ir.Size(f"cap_{k}", f"crd_{k}"),
            ir.Size(f"cols_{k}", param=1 + k), ir.Size(f"row_off_{k}", param=1 + n + k),
            ir.Size(f"col_off_{k}", param=1 + 2 * n + k)]
  return tuple(out)


def _part(k: int) -> ir.RowSegment:
  return ir.RowSegment(k, f"pos_{k}", f"crd_{k}", V(f"rows_{k}"), V(f"cols_{k}"),
                       V(f"cap_{k}"), V(f"row_off_{k}"), V(f"col_off_{k}"))


def _dest_at(k: int) -> ir.Expr:
  """Where part ``k``'s entries start in ``dest`` (the parts' capacities before it)."""
  return ir.Add(tuple(V(f"cap_{j}") for j in range(k))) if k else ir.Const(0)


def lower(plan, index_dtype: str, count_dtype: str = "int32",
          value_dtype: str | None = None) -> ir.Assembly:
  """The structure kernel of ``plan`` (which must have one: ``kernel_reason``).

  Args:
    plan: the :class:`~.union_kernel.UnionPlan`.
    index_dtype / count_dtype: ``"int32"`` or ``"int64"``.
    value_dtype: the summed values' dtype for ``jscorch_union_sum`` (then neither ``dest``
      nor ``src`` is returned), or None for ``jscorch_union_pattern``.
  """
  n = len(plan.parts)
  parts = tuple(_part(k) for k in range(n))
  want_dest = plan.dest and value_dtype is None
  nse, rows, r, c = V("nse"), V("rows"), ir.Coord("r"), ir.Coord("c")
  inputs = [a for k in range(n) for a in (
      ir.Array(f"pos_{k}", "index", ir.Add((V(f"rows_{k}"), ir.Const(1))), arg=2 * k),
      ir.Array(f"crd_{k}", "index", V(f"cap_{k}"), arg=2 * k + 1))]
  outputs = [ir.Array("out_pos", "index", ir.Add((rows, ir.Const(1))), ret=0),
             ir.Array("out_crd", "index", nse, ret=1)]
  if want_dest:
    outputs.append(ir.Array("dest", "index", ir.Add(tuple(p.cap for p in parts)), ret=2))
  outputs.append(ir.Array("count", "count", ir.Const(1), ret=len(outputs)))
  if value_dtype is None:
    leaves = tuple(ir.Link(k, "dest" if want_dest else None, _dest_at(k), nse, f"src_{k}",
                           p.cap) for k, p in enumerate(parts))
    outputs += [ir.Array(f"src_{k}", "index", nse, ret=len(outputs) + k) for k in range(n)]
  else:
    leaves = tuple(ir.Fold(k, f"val_{k}", "out_val", V("blk"), k == 0, p.cap)
                   for k, p in enumerate(parts))
    inputs += [ir.Array(f"val_{k}", "value", ir.Mul((p.cap, V("blk"))), arg=2 * n + k)
               for k, p in enumerate(parts)]
    outputs.append(ir.Array("out_val", "value", ir.Mul((nse, V("blk"))), ret=len(outputs)))
  every_row = ir.Rows(r, rows, parts, SPLIT_AT)
  count = ir.Count("start", ir.Add((r, ir.Const(1))), V("cols"), BITMAP_COLS if n == 2 else 0)
  fill = (ir.Append("out_crd", ir.Load("start", r), nse), *leaves)
  body = (*(ir.Unreached(p, "dest", _dest_at(k), nse) for k, p in enumerate(parts)
            if want_dest),
          ir.Loop(every_row, ir.Parallel.OUTER,
                  (ir.Loop(ir.Union(c, parts), ir.Parallel.NONE, (count,)),)),
          ir.PrefixSum("start", rows),
          ir.Loop(every_row, ir.Parallel.OUTER,
                  (ir.Loop(ir.Union(c, parts), ir.Parallel.NONE, fill),)),
          ir.Finalize("out_pos", "out_crd", "start", rows, nse, V("cols"), "count", leaves))
  mode = f"sum of {value_dtype} values" if value_dtype else \
      ("dest and src" if want_dest else "src")
  return ir.Assembly(
      inputs=tuple(inputs), outputs=tuple(outputs),
      scratch=(ir.Array("start", "int64", ir.Add((rows, ir.Const(1)))),),
      sizes=_sizes(n), batch="out_crd", body=body, index_dtype=index_dtype,
      count_dtype=count_dtype, value_dtype=value_dtype,
      notes=(("union", f"{n} parts, sorted row segments merged in order ({mode})"),
             ("passes", "count per row, prefix sum, fill; parallel over rows")))
