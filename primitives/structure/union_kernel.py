"""The union pattern as a primitive, with a generated co-iteration kernel on CPU.

``jscorch_union_pattern`` computes, from the index buffers of sparse operands
(*parts*), the integer half of a union or concatenation (see
:mod:`jscorch.primitives.union`): the level buffers of the distinct coordinates,
the output leaf ``dest`` of every input entry (``nse`` for padding), the
number of distinct coordinates ``count`` and, per part, its inverse ``src`` (the
entry of that part at every output leaf). Values never enter it: they keep
moving in XLA (a gather by ``src``), so jvp, transpose and vmap of the values
stay exact and the primitive itself is integer-only.

Lowerings: the portable rule (a concatenate-and-sort in XLA) everywhere; on CPU a
generated kernel, TACO's union merge lattice. For every output row it walks the
sorted segment of that row in every part and emits the union in order, in two
passes parallel over rows with ``jscorch_parallel_for``: count per row, prefix
sum, fill. That kernel is a loop nest of the IR (:mod:`.union_loops` plans it,
``backends/c/assembly.py`` prints it, ``interpret.run_assembly`` runs it in the
tests); it returns exactly the buffers of the portable rule, bit for bit (padding
and capacity overflow included). Plans without a kernel run the portable rule;
:data:`FALLBACKS` lists why, :data:`last_decisions` records it.

Example:
  >>> import jax.numpy as jnp
  >>> from jscorch.primitives.formats import CSR
  >>> from jscorch.primitives.layout import Layout
  >>> a = Layout(CSR, (2, 3), 2)
  >>> plan = UnionPlan(Layout(CSR, (2, 3), 3), (a, a), (None, None), "add")
  >>> pos, crd, dest, count, src_a, src_b = union_pattern(
  ...     plan, [(jnp.array([0, 1, 2]), jnp.array([0, 2])),
  ...            (jnp.array([0, 1, 2]), jnp.array([1, 2]))])
  >>> crd, dest, count
  (Array([0, 1, 2], dtype=int32), Array([0, 2, 1, 2], dtype=int32), Array(3, dtype=int32))
  >>> src_a, src_b      # the part's nse (2) where it stores nothing
  (Array([0, 2, 1], dtype=int32), Array([2, 0, 1], dtype=int32))
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from .. import convert, kernel_build
from .. import loopnest as ir
from ..backends.c import assembly
from ..layout import Layout
from ..settings import settings
from . import union_loops
from .union_loops import BITMAP_COLS as BITMAP_COLS
from .union_loops import params as params

#: Union plans without a generated kernel (they run the portable rule), by reason.
FALLBACKS = {
    "format": "an output or part format that is not two levels (dense or compressed, then "
              "compressed): COO (singleton levels), DCSR, CSF and 1-D or 3-D sparse parts",
    "order": "a part whose storage order differs from the output's (CSR + CSC), or whose "
             "levels are unordered or non-unique (duplicates): the sort handles them",
    "parts": "fewer than two parts (a single part is a coalescing, not a union)",
    "index dtype": "index buffers bound directly (not through union_pattern) in a dtype other "
                   "than the output's index dtype",
    "no compiler": "no C compiler on this machine",
}

#: The most recent decisions, (plan, "kernel" | fallback reason), newest last.
last_decisions: collections.deque = collections.deque(maxlen=64)


@dataclasses.dataclass(frozen=True)
class UnionPlan:
  """The static description of a union (hashable: the primitive's parameter).

  Attributes:
    out: the result layout (a unique format; ``out.nse`` the capacity).
    parts: the layout of every part, in order.
    offsets: per part, a shift of its logical sparse coordinates (concatenation), or None.
    func: the public function name, for errors.
    dest: whether the primitive returns ``dest`` (values only need ``src``; leaving
      ``dest`` out saves the kernel a write of every input entry).
  """
  out: Layout
  parts: tuple
  offsets: tuple
  func: str
  dest: bool = True

  def with_batch(self, size: int) -> UnionPlan:
    """The plan with one more leading batch dimension of ``size`` on every layout."""
    def grow(lay):
      return Layout(lay.format.replace(n_batch=lay.n_batch + 1), (size,) + lay.shape, lay.nse)
    return dataclasses.replace(self, out=grow(self.out), parts=tuple(map(grow, self.parts)))


# ---------------------------------------------------------------------------------------
# jscorch_union_pattern: index buffers of the parts (cast to the output's index dtype)
# -> (output index buffers..., dest `[*batch, sum of part nse]`, count `[*batch]`,
#     src `[*batch, out.nse]` per part).
# ---------------------------------------------------------------------------------------
union_pattern_p = Primitive("jscorch_union_pattern")
union_pattern_p.multiple_results = True


def union_pattern(plan: UnionPlan, indices: Sequence[Sequence[jax.Array]]):
  """The union pattern of the parts' index buffers.

  Args:
    plan: the static plan.
    indices: per part, its index buffers (``plan.parts[k].index_shapes``); any integer
      dtype (they are cast to the output's index dtype).

  Returns:
    ``(*out_indices, dest, count, *src)`` (``dest`` only when ``plan.dest``): the output's
    index buffers, the output leaf of
    every input entry `[*batch, sum of part nse]` (parts concatenated in order; ``out.nse``
    for padding, and leaves at or past ``out.nse`` when the capacity overflows), the number
    of distinct coordinates `[*batch]` and, per part, the entry stored at every output leaf
    `[*batch, out.nse]` (the part's ``nse`` where it stores none; see :func:`sources`).
  """
  idt = plan.out.index_dtype
  flat = [jnp.asarray(b).astype(idt) for idx in indices for b in idx]
  return union_pattern_p.bind(*flat, plan=plan)


def _split(plan: UnionPlan, flat):
  out, at = [], 0
  for lay in plan.parts:
    n = len(lay.index_shapes)
    out.append(tuple(flat[at:at + n]))
    at += n
  return out


@functools.lru_cache(maxsize=256)
def _portable(plan: UnionPlan):
  from .. import union  # the portable rule lives with the union composition
  run = union.portable_pattern(plan.out, plan.parts, plan.func, plan.offsets)

  def pattern(*flat):
    indices, dest, count = run(_split(plan, flat))
    return (*indices, *([dest] if plan.dest else []), count, *sources(plan, dest))
  return pattern


def sources(plan: UnionPlan, dest: jax.Array) -> list[jax.Array]:
  """Per part, the entry stored at every output leaf `[*batch, out.nse]` (its ``nse``
  where it stores none): ``dest`` inverted, so values can be gathered. Only for parts of
  unique formats: of a part's duplicates at one leaf, one would be kept."""
  nb, nse = plan.out.n_batch, plan.out.nse
  out, at = [], 0
  for lay in plan.parts:
    d = dest[..., at:at + lay.nse]
    at += lay.nse

    def invert(d, cap=lay.nse):
      return jnp.full((nse,), cap, d.dtype).at[d].set(jnp.arange(cap, dtype=d.dtype),
                                                       mode="drop")
    f = invert
    for _ in range(nb):
      f = jax.vmap(f)
    out.append(f(d))
  return out


def _union_pattern_impl(*flat, plan: UnionPlan):
  return jax.jit(_portable(plan))(*flat)


def _union_pattern_abstract_eval(*avals, plan: UnionPlan):
  shapes = jax.eval_shape(_portable(plan), *avals)
  return [jax.core.ShapedArray(s.shape, s.dtype) for s in shapes]


def _union_pattern_jvp(primals, tangents, *, plan: UnionPlan):
  out = union_pattern_p.bind(*primals, plan=plan)
  return out, [ad.Zero(jax.typeof(o).to_tangent_aval()) for o in out]


def _union_pattern_batching_rule(args, dims, *, plan: UnionPlan):
  size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  moved = [jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
           for a, d in zip(args, dims)]
  out = union_pattern_p.bind(*moved, plan=plan.with_batch(size))
  return out, [0] * len(out)


def _union_pattern_portable_lowering(ctx, *args, plan: UnionPlan):
  return mlir.lower_fun(_portable(plan), multiple_results=True)(ctx, *args)


# -- the kernel ---------------------------------------------------------------------------
def _is_row_format(fmt) -> bool:
  """Two levels: dense or compressed, then compressed (CSR, CSC; DCSR is checked apart)."""
  lv = fmt.levels
  return len(lv) == 2 and not lv[0].has_crd and lv[1].has_pos


def kernel_reason(plan: UnionPlan) -> str:
  """``"kernel"`` when a generated kernel computes ``plan``, else a key of :data:`FALLBACKS`."""
  if len(plan.parts) < 2:
    return "parts"
  out = plan.out
  if not _is_row_format(out.format):
    return "format"
  for lay in plan.parts:
    if not _is_row_format(lay.format) or lay.n_batch != out.n_batch or \
        lay.batch_shape != out.batch_shape:
      return "format"
    if lay.format.mode_ordering != out.format.mode_ordering or \
        not all(l.ordered and l.unique for l in lay.format.levels):
      return "order"
  return "kernel"


#: Value dtypes the fused sum kernel handles (others run the pattern kernel and a gather).
VALUE_DTYPES = frozenset(map(np.dtype, ("float32", "float64", "int32", "int64")))


def lower(plan: UnionPlan, count_dtype, val_dtype=None) -> ir.Assembly:
  """The loop nest of ``plan``'s kernel (:func:`.union_loops.lower`): the pattern kernel,
  or with ``val_dtype`` the fused sum kernel."""
  return union_loops.lower(plan, np.dtype(plan.out.index_dtype).name,
                           np.dtype(count_dtype).name,
                           None if val_dtype is None else np.dtype(val_dtype).name)


def generate(plan: UnionPlan, count_dtype, val_dtype=None) -> tuple[str, str]:
  """``(target name, C source)`` of the kernel of ``plan`` (which must have one).

  The loop nest depends only on the number of parts, the dtypes and whether ``dest`` is
  returned: every shape, capacity and offset of that variant runs the same build (sizes
  are read at run time).
  """
  kernel = lower(plan, count_dtype, val_dtype)
  return kernel.name, assembly.generate(kernel)


def ensure_registered(plan: UnionPlan, count_dtype, val_dtype=None) -> str:
  """Builds (or loads from cache) and registers the kernel; returns its target name."""
  return kernel_build.ensure_registered(*generate(plan, count_dtype, val_dtype))


def _union_pattern_cpu_lowering(ctx, *args, plan: UnionPlan):
  choice = settings.lowering
  if choice != "portable" and kernel_build.compiler() is None:
    kernel_build.warn_no_compiler()
    reason = "no compiler"
  else:
    reason = "portable" if choice == "portable" else kernel_reason(plan)
  idt = np.dtype(plan.out.index_dtype)
  if reason == "kernel" and any(np.dtype(a.dtype) != idt for a in ctx.avals_in):
    reason = "index dtype"      # the kernel reads every buffer as the output's idx_t
  last_decisions.append((plan, reason))
  if reason != "kernel":
    return _union_pattern_portable_lowering(ctx, *args, plan=plan)
  name = ensure_registered(plan, ctx.avals_out[len(plan.out.index_shapes) + plan.dest].dtype)
  prm = params(plan)           # sizes the dims do not carry: one more (constant) operand
  ctx = ctx.replace(avals_in=[*ctx.avals_in, jax.core.ShapedArray(prm.shape, prm.dtype)])
  return jax.ffi.ffi_lowering(name)(ctx, *args, mlir.ir_constant(prm))


union_pattern_p.def_impl(_union_pattern_impl)
union_pattern_p.def_abstract_eval(_union_pattern_abstract_eval)
ad.primitive_jvps[union_pattern_p] = _union_pattern_jvp
batching.primitive_batchers[union_pattern_p] = _union_pattern_batching_rule
mlir.register_lowering(union_pattern_p, _union_pattern_portable_lowering)
mlir.register_lowering(union_pattern_p, _union_pattern_cpu_lowering, platform="cpu")


# ---------------------------------------------------------------------------------------
# jscorch_union_sum: index buffers, then the parts' values `[*batch, nse_k, *block]` ->
# (output index buffers..., count `[*batch]`, data `[*batch, out.nse, *block]`): the pattern
# and, at every leaf, the sum of the parts' values there, in one pass (the kernel writes no
# src arrays and XLA gathers nothing). Defined as union_pattern + a gather per part + their
# sum, which is also its portable rule and its jvp (so gradients and transposes stay the
# gathers'); on CPU the sum kernel where union_pattern has a kernel and the dtype is in
# VALUE_DTYPES.
# ---------------------------------------------------------------------------------------
union_sum_p = Primitive("jscorch_union_sum")
union_sum_p.multiple_results = True


def union_sum(plan: UnionPlan, indices: Sequence[Sequence[jax.Array]], datas: Sequence):
  """``(*out_indices, count, data)``: the union pattern and the parts' values summed on it.

  Args:
    plan: the static plan (``plan.dest`` is ignored).
    indices: per part, its index buffers (cast to the output's index dtype).
    datas: per part, its values `[*batch, nse_k, *block]`, all of one dtype.

  Raises:
    ValueError: a part's format is not unique (see :func:`sources`).
  """
  if not all(lay.format.unique for lay in plan.parts):
    raise ValueError("union_sum: got a part of a non-unique format, expected unique formats "
                     "(its values are gathered, one entry per leaf). Sum duplicates by a "
                     "scatter-add over union_pattern's dest instead (primitives/union.py).")
  idt = plan.out.index_dtype
  flat = [jnp.asarray(b).astype(idt) for idx in indices for b in idx]
  return union_sum_p.bind(*flat, *datas, plan=dataclasses.replace(plan, dest=False))


def _gather_sum(plan: UnionPlan, srcs, datas):
  def values(srcs, datas):
    total = None
    for src, data in zip(srcs, datas):
      taken = convert.take(data, src, 0)
      total = taken if total is None else total + taken
    return total
  f = values
  for _ in range(plan.out.n_batch):
    f = jax.vmap(f)
  return f(srcs, datas)


def _n_index(plan: UnionPlan) -> int:
  return sum(len(lay.index_shapes) for lay in plan.parts)


def _sum_composed(plan: UnionPlan):
  n_out = len(plan.out.index_shapes)

  def run(*args):
    flat, datas = args[:_n_index(plan)], args[_n_index(plan):]
    out = union_pattern_p.bind(*flat, plan=plan)
    return (*out[:n_out + 1], _gather_sum(plan, out[n_out + 1:], datas))
  return run


def _union_sum_impl(*args, plan: UnionPlan):
  return jax.jit(functools.partial(union_sum_p.bind, plan=plan))(*args)


def _union_sum_abstract_eval(*avals, plan: UnionPlan):
  shapes = jax.eval_shape(_sum_composed(plan), *avals)
  return [jax.core.ShapedArray(s.shape, s.dtype) for s in shapes]


def _union_sum_jvp(primals, tangents, *, plan: UnionPlan):
  # The pattern once, then the (linear) gathers of the values and of their tangents.
  n_out = len(plan.out.index_shapes)
  flat, datas = primals[:_n_index(plan)], primals[_n_index(plan):]
  out = union_pattern_p.bind(*flat, plan=plan)
  srcs = out[n_out + 1:]
  dts = [ad.instantiate_zeros(t) for t in tangents[_n_index(plan):]]
  primal_out = (*out[:n_out + 1], _gather_sum(plan, srcs, datas))
  zeros = [ad.Zero(jax.typeof(o).to_tangent_aval()) for o in out[:n_out + 1]]
  return primal_out, [*zeros, _gather_sum(plan, srcs, dts)]


def _union_sum_batching_rule(args, dims, *, plan: UnionPlan):
  size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  moved = [jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
           for a, d in zip(args, dims)]
  out = union_sum_p.bind(*moved, plan=plan.with_batch(size))
  return out, [0] * len(out)


def _union_sum_portable_lowering(ctx, *args, plan: UnionPlan):
  return mlir.lower_fun(_sum_composed(plan), multiple_results=True)(ctx, *args)


def _union_sum_cpu_lowering(ctx, *args, plan: UnionPlan):
  n_index = _n_index(plan)
  val_dtype = np.dtype(ctx.avals_in[n_index].dtype) if len(args) > n_index else None
  kernel = (settings.lowering != "portable" and kernel_build.compiler() is not None
            and kernel_reason(plan) == "kernel" and val_dtype in VALUE_DTYPES
            and all(np.dtype(a.dtype) == val_dtype for a in ctx.avals_in[n_index:])
            and all(np.dtype(a.dtype) == np.dtype(plan.out.index_dtype)
                    for a in ctx.avals_in[:n_index]))
  if not kernel:      # the composition: union_pattern (its own kernel or fallback) + gathers
    return _union_sum_portable_lowering(ctx, *args, plan=plan)
  last_decisions.append((plan, "kernel"))
  name = ensure_registered(plan, ctx.avals_out[len(plan.out.index_shapes)].dtype, val_dtype)
  prm = params(plan)
  ctx = ctx.replace(avals_in=[*ctx.avals_in, jax.core.ShapedArray(prm.shape, prm.dtype)])
  return jax.ffi.ffi_lowering(name)(ctx, *args, mlir.ir_constant(prm))


union_sum_p.def_impl(_union_sum_impl)
union_sum_p.def_abstract_eval(_union_sum_abstract_eval)
ad.primitive_jvps[union_sum_p] = _union_sum_jvp
batching.primitive_batchers[union_sum_p] = _union_sum_batching_rule
mlir.register_lowering(union_sum_p, _union_sum_portable_lowering)
mlir.register_lowering(union_sum_p, _union_sum_cpu_lowering, platform="cpu")
