"""The einsum's kernel planning entry point: a spec -> a planned kernel or a fallback reason.

:func:`kernel_plan` decides, from the static spec alone (which sparse sources share
index buffers is recorded in it at bind time: ``spec.same_pattern``), whether a
generated kernel applies, and plans it (the loop-nest IR of :mod:`.plan`, or the
SpGEMM plan). When none applies the portable lowering runs instead; every such case
is one of :data:`FALLBACKS`, and the reason is recorded in :data:`last_decisions` so
tests can assert which path a plan took. Backends (:mod:`.backends`) lower the plans.

Settings: ``jscorch.config.lowering`` (or ``$JSCORCH_LOWERING``) is ``"auto"``
(a kernel where one applies), ``"c"`` (``"kernel"``: the C backend only) or
``"portable"``. Without a C compiler the portable lowering runs, with one warning.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from . import codegen_spgemm, einsum_portable, kernel_build, loopnest
from . import plan as kernel_planner
from .backends.c import printer
from .einsum_spec import SAMPLED_OUT, SPARSE_OUT, EinsumSpec
from .formats import CSC, CSR, compressed, dense
from .layout import Layout
from .planner import PATTERN, source_operand
from .settings import settings

#: Plans without a generated kernel (they run the portable lowering), by reason.
FALLBACKS = {
    "dtype": "values other than float32 / float64 (integers, complex; bfloat16 and float16 "
             "are planned, and only the Pallas backend on GPUs takes them), or a backend "
             "without the dtype (float64 on a TPU)",
    "sparse output": "a new sparse pattern that is not a matrix product ``ij,jk->ik`` (batch "
                     "dims alike) of two 2-D sparse operands (CSR x CSR -> CSR or CSC x CSC -> "
                     "CSC directly; other formats, COO, DCSR, mixed, the CSR kernel between "
                     "conversions, :func:`csr_product`): block dims, n-d (CSF) operands, "
                     "batch dims that differ, or other expressions (three operands, a free "
                     "index kept in the result)",
    "co-iteration": "sparse sources that are neither merged with the driver, nor joined "
                    "inside its loops (located, then iterated or intersected), as stored or "
                    "after conversions (:func:`converted`): sources whose batch dims differ "
                    "(``bij,ij->bi``), or a repeated index within a source other than the "
                    "driver (``ij,jj->i``)",
    "empty": "a dimension or capacity of size zero",
    "level type": "a sparse source with a level type that has no loop-nest iteration "
                  "(``Level.iterate``), such as one registered by a user",
    "no compiler": "no C compiler on this machine",
}

#: Value dtypes a kernel is planned for (each backend says which of them it takes).
PLANNED_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, "bfloat16", np.float16))

#: The most recent decisions, (spec, "kernel" | fallback reason), newest last.
last_decisions: collections.deque = collections.deque(maxlen=64)


def _storage_structure(op) -> tuple:
  """A sparse source's structure in storage order: levels, shapes, capacity and bound ids.

  A transposed *view* (same buffers, mode ordering and shape permuted) has the same
  storage structure as the array it views, so the two iterate as one pattern.
  """
  lay = op.layout
  order = lay.format.mode_ordering
  sparse_ids = op.bound[lay.n_batch:]
  return (lay.format.levels, lay.batch_shape, tuple(lay.sparse_shape[d] for d in order),
          lay.nse, op.bound[:lay.n_batch] + tuple(sparse_ids[d] for d in order))


def kernel_plan(spec: EinsumSpec, flat: Sequence, dtype, *, always_transpose: bool = False
                ) -> tuple[loopnest.Kernel | codegen_spgemm.SpgemmPlan | None, str]:
  """The planned kernel for ``spec`` (its loop-nest IR, or the SpGEMM plan) or
  ``(None, reason)`` (a key of :data:`FALLBACKS`).

  Args:
    spec: the einsum.
    flat: the flat inputs (only their number is used; which sources share index
      buffers is ``spec.same_pattern``).
    dtype: the value dtype.
    always_transpose: re-sort a driver whenever that makes its units owners
      (:func:`plan.lower`).
  """
  if np.dtype(dtype) not in PLANNED_DTYPES:
    return None, "dtype"
  if spec.out_kind == SPARSE_OUT:
    plan = spgemm_plan(spec, dtype)
    return (plan, "kernel") if plan is not None else (None, "sparse output")
  if any(s == 0 for _, s in spec.sizes):
    return None, "empty"
  sources = [k for k, op in enumerate(spec.operands) if op.sparse]
  if spec.out_kind == SAMPLED_OUT:
    sources.append(PATTERN)
  first = source_operand(spec, sources[0])
  if any(source_operand(spec, s).layout.nse == 0 for s in sources):
    return None, "empty"
  if not all(lvl.has_iterate for s in sources
             for lvl in source_operand(spec, s).layout.format.levels):
    return None, "level type"
  # Group the sources by identical structure (same layout, and the same index buffers
  # as recorded in the spec at bind time: spec.same_pattern).
  groups_of: list[tuple[int, None]] = []        # (first source, None) per structure
  structure = {}
  for s in sources:
    op = source_operand(spec, s)
    for n, (rep, _) in enumerate(groups_of):
      if _storage_structure(op) == _storage_structure(source_operand(spec, rep)) and \
          spec.shares_pattern(s, rep):
        structure[s] = n
        break
    else:
      structure[s] = len(groups_of)
      groups_of.append((s, None))
  pattern_rep = groups_of[structure[PATTERN]][0] if PATTERN in structure else None
  arrangement = _arrangement(spec, [rep for rep, _ in groups_of], pattern_rep)
  if arrangement is None:
    return None, "co-iteration"
  driver, co, joined = arrangement
  chosen = [driver, *co, *joined]
  structure = {s: chosen.index(groups_of[n][0]) for s, n in structure.items()}
  first = source_operand(spec, driver)
  lay = first.layout
  ids = _storage_ids(first)
  positions, _ = spec.split_inputs(list(range(len(flat))))

  def index_input(s):
    # (an all-dense source has no index buffers: the position they would start at)
    return positions[s][0] + 1 if s != PATTERN else sum(op.n_buffers for op in spec.operands)

  def bare(lay):
    return lay.replace(format=lay.format.replace(n_dense=0),
                       shape=lay.batch_shape + lay.sparse_shape)

  partners = tuple((bare(source_operand(spec, rep).layout), index_input(rep)) for rep in co)
  joins = tuple((bare(source_operand(spec, rep).layout), index_input(rep),
                 _storage_ids(source_operand(spec, rep))) for rep in joined)
  structure_of = tuple(structure.get(k, -1) for k in range(len(spec.operands)))
  kp = kernel_planner.KernelPlan(spec, bare(lay), ids, index_input(driver), np.dtype(dtype),
                                 partners=partners, structure_of=structure_of,
                                 pattern_structure=structure.get(PATTERN, 0), joins=joins)
  return kernel_planner.lower(kp, always_transpose=always_transpose), "kernel"


def spgemm_plan(spec: EinsumSpec, dtype) -> codegen_spgemm.SpgemmPlan | None:
  """The Gustavson kernel plan when ``spec`` is CSR x CSR -> CSR (``ij,jk->ik``), or
  CSC x CSC -> CSC: the CSR product ``C^T = B^T A^T`` of the same buffers in swapped
  order (``SpgemmPlan.swapped``), no conversion; with the same batch dims throughout
  (``SpgemmPlan.batch`` elements, one after the other)."""
  if spec.out_kind != SPARSE_OUT or len(spec.operands) != 2 or \
      np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
    return None
  a, b = spec.operands
  out = spec.out_layout
  if not (a.sparse and b.sparse):
    return None
  n_b = a.layout.n_batch       # batched: the kernel loops over the batch elements
  lays = (a.layout, b.layout, out)
  if a.layout.format.replace(n_batch=0) not in (CSR, CSC) or \
      any(lay.format != a.layout.format or lay.batch_shape != a.layout.batch_shape
          for lay in lays) or b.indices[:n_b] != a.indices[:n_b] or \
      spec.out[:n_b] != a.indices[:n_b]:
    return None
  (i, j), (j2, k) = a.indices[n_b:], b.indices[n_b:]
  if j != j2 or spec.out[n_b:] != (i, k) or len({*a.indices[:n_b], i, j, k}) != n_b + 3:
    return None
  idt = {np.dtype(l.index_dtype) for l in lays}
  if len(idt) != 1:
    return None
  batch = int(np.prod(a.layout.batch_shape, dtype=np.int64))
  if a.layout.format.mode_ordering != (0, 1):       # CSC
    return codegen_spgemm.SpgemmPlan(spec.size(k), spec.size(j), spec.size(i), b.layout.nse,
                                     a.layout.nse, out.nse, np.dtype(dtype), idt.pop(),
                                     swapped=True, batch=batch)
  return codegen_spgemm.SpgemmPlan(spec.size(i), spec.size(j), spec.size(k), a.layout.nse,
                                   b.layout.nse, out.nse, np.dtype(dtype), idt.pop(),
                                   batch=batch)


def csr_product(spec: EinsumSpec, dtype) -> EinsumSpec | None:
  """The CSR x CSR -> CSR spec (:func:`einsum_portable.csr_equivalent`) whose SpGEMM kernel
  computes ``spec`` between conversions (linear-time structure kernels), or None."""
  csr = einsum_portable.csr_equivalent(spec)
  return csr if csr is not None and spgemm_plan(csr, dtype) is not None else None


def converted(spec: EinsumSpec, dtype) -> EinsumSpec | None:
  """``spec`` with some sparse operands in other formats, whose kernel computes ``spec``
  after those operands are converted (linear-time structure kernels), or None.

  For sources that no kernel co-iterates or joins as stored (COO mixed with other
  level kinds, unordered levels, other mode orderings, a joined level that cannot be
  located): the *driver* (a sampled output's pattern, else the first sparse operand)
  keeps its format, or takes ``(dense, compressed, ...)`` levels when it must be merged
  but cannot be; an operand with the driver's indices takes the driver's levels, in the
  driver's storage order (co-iterated); any other operand, unless it joins as stored,
  takes dense levels for its indices bound already, then compressed ones (joined).
  Conversions sum duplicates: exact, as an einsum is linear in each operand. Operands
  holding a sampled output's pattern are never converted.

  Example:
    >>> from jscorch.primitives.formats import COO
    >>> from jscorch.primitives.einsum_spec import Operand
    >>> spec = EinsumSpec((Operand((0, 1), Layout(CSR, (3, 4), 5)),
    ...                    Operand((0, 1), Layout(COO, (3, 4), 6))), out=(0,),
    ...                   sizes=((0, 3), (1, 4)), work=9)
    >>> converted(spec, np.float32).operands[1].layout.format == CSR
    True
  """
  if spec.out_kind == SPARSE_OUT or \
      np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
    return None
  sparse = [k for k, op in enumerate(spec.operands) if op.sparse]
  fixed = {k for k in sparse if spec.out_kind == SAMPLED_OUT and spec.shares_pattern(k, PATTERN)}
  driver = PATTERN if spec.out_kind == SAMPLED_OUT else sparse[0]
  d = source_operand(spec, driver)
  nb = d.layout.n_batch
  d_ids = _storage_ids(d)
  layouts = {}

  def relaid(k, levels, ids):          # operand k's layout storing ``ids`` in ``levels``
    op = spec.operands[k]
    sparse_ids = op.bound[nb:]
    order = tuple(sparse_ids.index(i) for i in ids)
    fmt = op.layout.format.replace(levels=tuple(levels), mode_ordering=order)
    lay = Layout(fmt, op.layout.shape, op.layout.nse)
    if lay.fixed_nse is not None:     # relaid in dense levels: stores every coordinate
      lay = lay.replace(nse=lay.fixed_nse)
    if lay != op.layout:
      layouts[k] = lay

  others = [k for k in sparse if k != driver and k not in fixed]
  if any(len(set(spec.operands[k].bound)) != len(spec.operands[k].bound) or
         spec.operands[k].layout.n_batch != nb or spec.operands[k].bound[:nb] != d_ids[:nb]
         for k in others):
    return None
  co = [k for k in others if set(spec.operands[k].bound) == set(d_ids)]
  levels = d.layout.format.levels
  if co and driver not in fixed and driver != PATTERN and \
      not _co_iterable(spec, [driver, driver]):
    levels = (dense,) + (compressed,) * (len(levels) - 1)
    relaid(driver, levels, d_ids[nb:])
  inner: set = set()                # indices bound by joined loops
  joined = []
  for k in others:
    ids = spec.operands[k].bound
    if k in co:
      relaid(k, levels, d_ids[nb:])
      continue
    if not _joins(_relaid_spec(spec, layouts), driver, [*joined, k]):
      order = [i for i in ids[nb:] if i in d_ids] + [i for i in ids[nb:] if i in inner] + \
          [i for i in ids[nb:] if i not in d_ids and i not in inner]
      n_outer = sum(i in d_ids for i in order)
      relaid(k, (dense,) * n_outer + (compressed,) * (len(order) - n_outer), order)
    joined.append(k)
    inner |= {i for i in ids[nb:] if i not in d_ids}
  if not layouts:
    return None
  new = _relaid_spec(spec, layouts)
  ops = new.operands
  n_flat = sum(op.n_buffers for op in ops) + (
      len(spec.out_layout.index_shapes) if spec.out_kind == SAMPLED_OUT else 0)
  plan, _ = kernel_plan(new, range(n_flat), dtype)
  return new if plan is not None else None


def _relaid_spec(spec: EinsumSpec, layouts: dict) -> EinsumSpec:
  """``spec`` with operand ``k`` in ``layouts[k]`` (converted operands share no buffers)."""
  ops = tuple(dataclasses.replace(op, layout=layouts.get(k, op.layout))
              for k, op in enumerate(spec.operands))
  keep = {s: (None if s in layouts else s) for s in [*range(len(ops)), PATTERN]}
  return spec.replace(operands=ops, same_pattern=spec.remap_patterns(keep))


def kernels_enabled() -> bool:
  """Kernels are on (setting) and possible (a compiler exists)."""
  return settings.lowering != "portable" and kernel_build.compiler() is not None


def spgemm_sizes(plan: codegen_spgemm.SpgemmPlan, a_indices, b_indices) -> tuple[int, int]:
  """Eager ``(entries of the result, matching entry pairs)`` of a CSR x CSR product.

  The entries are counted by the plan's own compiled counter (the kernel's first
  pass, on one thread per available core), so no second compile is needed.
  """
  import ctypes
  import os
  if plan.swapped:           # CSC x CSC: the CSR product of the transposes, B^T A^T
    a_indices, b_indices = b_indices, a_indices
  lib = kernel_build.build(codegen_spgemm.generate(plan))
  count = getattr(lib, plan.name + "_count")
  count.restype = ctypes.c_int64
  host = [np.ascontiguousarray(np.asarray(x)) for x in (*a_indices, *b_indices)]
  threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  sizes = [ctypes.c_int64(s) for s in (plan.m, plan.k, plan.n)]
  # batched: the most entries of any element, and the matching pairs of all of them
  # (the portable join's counts)
  host = [h.reshape(plan.batch, h.shape[-1]) for h in host]
  nse = pairs = 0
  for a_pos, a_crd, b_pos, b_crd in zip(*host):
    ptr = [h.ctypes.data_as(ctypes.c_void_p) for h in (a_pos, a_crd, b_pos, b_crd)]
    nse = max(nse, count(*sizes, ptr[0], ptr[1], ctypes.c_int64(a_crd.shape[0]), ptr[2],
                         ptr[3], ctypes.c_int64(b_crd.shape[0]), ctypes.c_int64(threads or 1)))
    used = a_crd[:a_pos[-1]]
    used = used[used < plan.k]
    pairs += int((b_pos[used + 1] - b_pos[used]).sum())
  return int(nse), pairs


def _source(kp) -> str:
  if isinstance(kp, codegen_spgemm.SpgemmPlan):
    return codegen_spgemm.generate(kp)
  return printer.generate(kp)


def _storage_ids(op) -> tuple[int, ...]:
  """A sparse source's index ids: batch dims, then its levels in storage order."""
  lay = op.layout
  return op.bound[:lay.n_batch] + tuple(op.bound[lay.n_batch + d]
                                         for d in lay.format.mode_ordering)


def _arrangement(spec: EinsumSpec, reps, pattern_rep) -> tuple | None:
  """``(driver, co-iterated partners, joined structures)`` of the structures ``reps`` (one
  source each), or None.

  The driver's levels are the outer loops; partners with its format and indices are
  co-iterated with it (:func:`_co_iterable`); every other structure is joined inside
  them, in turn (:func:`_joinable`: its levels whose coordinates are bound already are
  located, the rest bind new indices). A sampled output's pattern drives or is
  co-iterated (its entries are the units' outputs). Drivers are tried in ``reps`` order.
  """
  if len(reps) == 1:
    return reps[0], (), ()
  for driver in reps:
    co = [r for r in reps if r != driver and _co_iterable(spec, [driver, r])]
    if co and not _co_iterable(spec, [driver, *co]):
      continue
    if pattern_rep is not None and pattern_rep not in (driver, *co):
      continue
    rest, joined = [r for r in reps if r != driver and r not in co], []
    while rest:
      r = next((r for r in rest if _joins(spec, driver, [*joined, r])), None)
      if r is None:
        break
      rest.remove(r)
      joined.append(r)
    if not rest:
      return driver, tuple(co), tuple(joined)
  return None


def _joins(spec: EinsumSpec, driver, reps) -> bool:
  """Structures ``reps`` can be joined, in turn, inside the driver's loops
  (:func:`plan.join_loops`), each with the driver's batch dims."""
  d = source_operand(spec, driver)
  nb = d.layout.n_batch
  d_ids = _storage_ids(d)
  depth_of = {}
  for depth, i in enumerate(d_ids):
    depth_of.setdefault(i, depth - nb if depth >= nb else -1)
  joins = []
  for r in reps:
    op = source_operand(spec, r)
    ids = _storage_ids(op)
    if op.layout.n_batch != nb or ids[:nb] != d_ids[:nb] or \
        op.layout.batch_shape != d.layout.batch_shape:
      return False
    joins.append((ids[nb:], op.layout.format.levels))
  return kernel_planner.join_loops(joins, depth_of, len(d.layout.format.levels)) is not None


def _co_iterable(spec: EinsumSpec, reps) -> bool:
  """Structures can be merged: the same levels, level sizes and index ids in storage order
  (mode orderings may differ), no repeated index, and either ordered unique levels of
  kinds dense/compressed (merged level by level) or ordered COO (a compressed root, then
  singletons: merged over whole tuples)."""
  ops = [source_operand(spec, r) for r in reps]
  first = ops[0].layout

  def coo(levels):      # ordered COO: a compressed root, then singletons
    return levels[0].has_pos and not levels[0].full and \
        all(l.branchless for l in levels[1:]) and all(l.ordered for l in levels)

  def kinds(fmt):       # the format up to uniqueness (a tuple merge keeps duplicates)
    return tuple((l.kind, l.ordered) for l in fmt.levels), fmt.n_batch

  merge = all(coo(op.layout.format.levels) for op in ops) and \
      any(l.branchless or not l.unique for op in ops for l in op.layout.format.levels)
  for op in ops:
    lay = op.layout
    same = kinds(lay.format) == kinds(first.format) if merge else \
        (lay.format.levels, lay.n_batch) == (first.format.levels, first.n_batch)
    if not same or lay.batch_shape != first.batch_shape or \
        lay.level_sizes != first.level_sizes or \
        _storage_ids(op) != _storage_ids(ops[0]) or len(set(op.bound)) != len(op.bound):
      return False
    if not merge and any(l.branchless or not (l.ordered and l.unique)
                         for l in lay.format.levels):
      return False
  return True


def ensure_registered(kp) -> str:
  """Builds (or loads from cache) and registers the kernel; returns its target name.

  Also the explicit registration hook for executables restored from a serialized
  form, which skip the lowering rule that normally registers.
  """
  return kernel_build.ensure_registered(kp.name, lambda: _source(kp))

