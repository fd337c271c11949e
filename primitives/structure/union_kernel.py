"""The union pattern as a primitive, with a generated C co-iteration kernel on CPU.

``jscorch_union_pattern`` computes, from the index buffers of sparse operands
(*parts*), the integer half of a union or concatenation (see
:mod:`jscorch.primitives.union`): the level buffers of the distinct coordinates,
the output leaf ``dest`` of every input entry (``nse`` for padding) and the
number of distinct coordinates ``count``. Values never enter it: they keep
moving in XLA (a scatter by ``dest``), so jvp, transpose and vmap of the values
stay exact and the primitive itself is integer-only.

Lowerings: the portable rule (a concatenate-and-sort in XLA) everywhere; on CPU a
generated kernel, TACO's union merge lattice. For every output row it walks the
sorted segment of that row in every part and emits the union in order, in two
passes parallel over rows with ``jscorch_parallel_for``: count per row, prefix
sum, fill. The kernel returns exactly the buffers of the portable rule, bit for
bit (padding and capacity overflow included). Plans without a kernel run the
portable rule; :data:`FALLBACKS` lists why, :data:`last_decisions` records it.

Example:
  >>> import jax.numpy as jnp
  >>> from jscorch.primitives.formats import CSR
  >>> from jscorch.primitives.layout import Layout
  >>> a = Layout(CSR, (2, 3), 2)
  >>> plan = UnionPlan(Layout(CSR, (2, 3), 3), (a, a), (None, None), "add")
  >>> pos, crd, dest, count = union_pattern(plan, [(jnp.array([0, 1, 2]), jnp.array([0, 2])),
  ...                                              (jnp.array([0, 1, 2]), jnp.array([1, 2]))])
  >>> crd, dest, count
  (Array([0, 1, 2], dtype=int32), Array([0, 2, 1, 2], dtype=int32), Array(3, dtype=int32))
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from .. import kernel_build
from ..c_runtime import RUNTIME
from ..layout import Layout
from ..settings import settings

#: Union plans without a generated kernel (they run the portable rule), by reason.
FALLBACKS = {
    "format": "an output or part format that is not two levels (dense or compressed, then "
              "compressed): COO (singleton levels), DCSR, CSF and 1-D or 3-D sparse parts",
    "order": "a part whose storage order differs from the output's (CSR + CSC), or whose "
             "levels are unordered or non-unique (duplicates): the sort handles them",
    "parts": "fewer than two parts (a single part is a coalescing, not a union)",
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
  """
  out: Layout
  parts: tuple
  offsets: tuple
  func: str

  def with_batch(self, size: int) -> UnionPlan:
    """The plan with one more leading batch dimension of ``size`` on every layout."""
    def grow(lay):
      return Layout(lay.format.replace(n_batch=lay.n_batch + 1), (size,) + lay.shape, lay.nse)
    return dataclasses.replace(self, out=grow(self.out), parts=tuple(map(grow, self.parts)))


# ---------------------------------------------------------------------------------------
# jscorch_union_pattern: index buffers of the parts (cast to the output's index dtype)
# -> (output index buffers..., dest `[*batch, sum of part nse]`, count `[*batch]`).
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
    ``(*out_indices, dest, count)``: the output's index buffers, the output leaf of every
    input entry `[*batch, sum of part nse]` (parts concatenated in order; ``out.nse`` for
    padding, and leaves at or past ``out.nse`` when the capacity overflows) and the number
    of distinct coordinates `[*batch]`.
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
  from .. import union       # the portable rule lives with the union composition
  run = union.portable_pattern(plan.out, plan.parts, plan.func, plan.offsets)
  return lambda *flat: tuple(jax.tree_util.tree_leaves(run(_split(plan, flat))))


def _union_pattern_impl(*flat, plan: UnionPlan):
  return jax.jit(_portable(plan))(*flat)


def _union_pattern_abstract_eval(*avals, plan: UnionPlan):
  shapes = jax.eval_shape(_portable(plan), *avals)
  return [jax.core.ShapedArray(s.shape, s.dtype) for s in shapes]


def _union_pattern_jvp(primals, tangents, *, plan: UnionPlan):
  out = union_pattern_p.bind(*primals, plan=plan)
  return out, [ad.Zero(jax.core.get_aval(o).to_tangent_aval()) for o in out]


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


@dataclasses.dataclass(frozen=True)
class _Sizes:
  """What the C text needs, in storage order."""
  batch: int
  rows: int
  cols: int
  nse: int
  part_rows: tuple
  part_cols: tuple
  part_caps: tuple
  row_off: tuple
  col_off: tuple
  idx_t: str
  cnt_t: str


def _sizes(plan: UnionPlan, count_dtype) -> _Sizes:
  out = plan.out
  order = out.format.mode_ordering
  offs = [tuple(o) if o is not None else (0,) * out.n_sparse for o in plan.offsets]
  ctype = {np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t"}
  return _Sizes(
      batch=math.prod(out.batch_shape), rows=out.level_sizes[0], cols=out.level_sizes[1],
      nse=out.nse, part_rows=tuple(l.level_sizes[0] for l in plan.parts),
      part_cols=tuple(l.level_sizes[1] for l in plan.parts),
      part_caps=tuple(l.nse for l in plan.parts),
      row_off=tuple(int(o[order[0]]) for o in offs), col_off=tuple(int(o[order[1]]) for o in offs),
      idx_t=ctype[np.dtype(out.index_dtype)], cnt_t=ctype[np.dtype(count_dtype)])


def _c_array(name: str, values) -> str:
  return f"static const int64_t {name}[NPARTS] = {{{', '.join(str(int(v)) for v in values)}}};"


def _emit_header(s: _Sizes, name: str, plan: UnionPlan) -> str:
  parts = ", ".join(f"{l.format!r} {l.shape} nse={l.nse}" for l in plan.parts)
  return "\n".join([
      f"/* {name}: union pattern ({plan.func}) by a merge of sorted row segments.",
      f"   parts: {parts}",
      f"   out:   {plan.out.format!r} {plan.out.shape} nse={plan.out.nse}",
      f"   offsets (storage order): rows {s.row_off}, cols {s.col_off}",
      "   pass 1 counts the distinct columns of every row, a prefix sum places the rows,",
      "   pass 2 writes crd and the destination of every input entry. Parallel over rows. */",
      f"typedef {s.idx_t} idx_t;",
      f"typedef {s.cnt_t} cnt_t;",
      f"#define NPARTS {len(s.part_rows)}",
      f"#define BATCH {s.batch}LL",
      f"#define ROWS {s.rows}LL",
      f"#define COLS {s.cols}LL",
      f"#define NSE {s.nse}LL",
      _c_array("PART_ROWS", s.part_rows),
      _c_array("PART_COLS", s.part_cols),
      _c_array("PART_CAP", s.part_caps),
      _c_array("ROW_OFF", s.row_off),
      _c_array("COL_OFF", s.col_off),
      _c_array("DEST_BASE", np.cumsum((0,) + s.part_caps[:-1])),
      f"#define NDEST {sum(s.part_caps)}LL",
  ])


# The merge body: NPARTS is a compile-time constant, so gcc unrolls every loop over parts.
_BODY = r"""
typedef struct {
  const idx_t* pos[NPARTS];   /* this batch element's buffers */
  const idx_t* crd[NPARTS];
  int64_t* start;             /* ROWS + 1: output entries before each row */
  idx_t* out_crd;
  idx_t* dest;
} union_args;

/* The in-bounds segment [lo, hi) of output row r in part k (empty outside the part). */
static inline void segment(const union_args* a, int k, int64_t r, int64_t* lo, int64_t* hi) {
  int64_t rr = r - ROW_OFF[k];
  if (rr < 0 || rr >= PART_ROWS[k]) { *lo = *hi = 0; return; }
  int64_t s = a->pos[k][rr], e = a->pos[k][rr + 1];
  if (s < 0) s = 0;
  if (e > PART_CAP[k]) e = PART_CAP[k];
  if (e < s) e = s;
  *lo = s; *hi = e;
}

/* Merges row r; when out_crd is set, writes crd (below NSE) and dest from leaf `at`. */
static inline int64_t merge_row(const union_args* a, int64_t r, int64_t at, int write) {
  int64_t p[NPARTS], e[NPARTS];
  for (int k = 0; k < NPARTS; ++k) segment(a, k, r, &p[k], &e[k]);
  int64_t n = 0;
  for (;;) {
    int64_t c = INT64_MAX;
    for (int k = 0; k < NPARTS; ++k) {
      /* coordinates out of range are padding (only in buffers that skipped validation) */
      while (p[k] < e[k] && (a->crd[k][p[k]] < 0 || a->crd[k][p[k]] >= PART_COLS[k])) {
        if (write) a->dest[DEST_BASE[k] + p[k]] = (idx_t)NSE;
        ++p[k];
      }
      if (p[k] < e[k]) {
        int64_t ck = (int64_t)a->crd[k][p[k]] + COL_OFF[k];
        if (ck < c) c = ck;
      }
    }
    if (c == INT64_MAX) break;
    for (int k = 0; k < NPARTS; ++k) {
      if (p[k] < e[k] && (int64_t)a->crd[k][p[k]] + COL_OFF[k] == c) {
        if (write) a->dest[DEST_BASE[k] + p[k]] = (idx_t)(at + n);
        ++p[k];
      }
    }
    if (write && at + n < NSE) a->out_crd[at + n] = (idx_t)c;
    ++n;
  }
  return n;
}

static void count_rows(const void* args, int64_t lo, int64_t hi) {
  const union_args* a = (const union_args*)args;
  for (int64_t r = lo; r < hi; ++r) a->start[r + 1] = merge_row(a, r, 0, 0);
}

static void fill_rows(const void* args, int64_t lo, int64_t hi) {
  const union_args* a = (const union_args*)args;
  for (int64_t r = lo; r < hi; ++r) merge_row(a, r, a->start[r], 1);
}

/* Input entries before output row u (plus u): the work of rows < u, for balancing. */
static int64_t work_before(const void* args, int64_t u) {
  const union_args* a = (const union_args*)args;
  int64_t w = u;
  for (int k = 0; k < NPARTS; ++k) {
    int64_t rr = u - ROW_OFF[k];
    rr = rr < 0 ? 0 : (rr > PART_ROWS[k] ? PART_ROWS[k] : rr);
    int64_t v = a->pos[k][rr];
    w += v < 0 ? 0 : (v > PART_CAP[k] ? PART_CAP[k] : v);
  }
  return w;
}
"""


def _emit_handler(name: str) -> str:
  return f"""
XLA_FFI_Error* {name}(XLA_FFI_CallFrame* cf) {{
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  if (cf->args.size != 2 * NPARTS || cf->rets.size != 4)
    return jscorch_error(cf, "{name}: wrong number of buffers");
  idx_t* out_pos = (idx_t*)jscorch_ret(cf, 0);
  idx_t* out_crd = (idx_t*)jscorch_ret(cf, 1);
  idx_t* dest = (idx_t*)jscorch_ret(cf, 2);
  cnt_t* count = (cnt_t*)jscorch_ret(cf, 3);
  int64_t* start = (int64_t*)malloc(sizeof(int64_t) * (ROWS + 1));
  int64_t n_chunks = 4 * jscorch_num_threads(cf);
  int64_t* bounds = (int64_t*)malloc(sizeof(int64_t) * (n_chunks + 1));
  if (!start || !bounds) {{
    free(start); free(bounds);
    return jscorch_error(cf, "{name}: out of memory");
  }}
  for (int64_t b = 0; b < BATCH; ++b) {{
    union_args a;
    for (int k = 0; k < NPARTS; ++k) {{
      a.pos[k] = (const idx_t*)jscorch_arg(cf, 2 * k) + b * (PART_ROWS[k] + 1);
      a.crd[k] = (const idx_t*)jscorch_arg(cf, 2 * k + 1) + b * PART_CAP[k];
    }}
    a.start = start;
    a.out_crd = out_crd + b * NSE;
    a.dest = dest + b * NDEST;
    /* entries outside every row segment (padding) go nowhere */
    for (int k = 0; k < NPARTS; ++k) {{
      int64_t s, e;
      s = a.pos[k][0]; s = s < 0 ? 0 : (s > PART_CAP[k] ? PART_CAP[k] : s);
      e = a.pos[k][PART_ROWS[k]]; e = e < s ? s : (e > PART_CAP[k] ? PART_CAP[k] : e);
      idx_t* d = a.dest + DEST_BASE[k];
      for (int64_t q = 0; q < s; ++q) d[q] = (idx_t)NSE;
      for (int64_t q = e; q < PART_CAP[k]; ++q) d[q] = (idx_t)NSE;
    }}
    int64_t chunks = work_before(&a, ROWS) < 32768 ? 1 : n_chunks;
    chunks = jscorch_split(ROWS, work_before, &a, chunks, bounds);
    start[0] = 0;
    jscorch_parallel_for(cf, count_rows, &a, bounds, chunks);
    for (int64_t r = 0; r < ROWS; ++r) start[r + 1] += start[r];
    jscorch_parallel_for(cf, fill_rows, &a, bounds, chunks);
    idx_t* pos = out_pos + b * (ROWS + 1);
    for (int64_t r = 0; r <= ROWS; ++r) pos[r] = (idx_t)(start[r] < NSE ? start[r] : NSE);
    for (int64_t q = start[ROWS]; q < NSE; ++q) a.out_crd[q] = (idx_t)COLS;
    count[b] = (cnt_t)start[ROWS];
  }}
  free(start);
  free(bounds);
  return NULL;
}}
"""


def generate(plan: UnionPlan, count_dtype) -> tuple[str, str]:
  """``(target name, C source)`` of the kernel of ``plan`` (which must have one)."""
  s = _sizes(plan, count_dtype)
  key = hashlib.sha256(repr(s).encode()).hexdigest()[:16]
  name = f"jscorch_union_{len(s.part_rows)}_{key}"
  return name, "\n".join([RUNTIME, _emit_header(s, name, plan), _BODY, _emit_handler(name)])


def ensure_registered(plan: UnionPlan, count_dtype) -> str:
  """Builds (or loads from cache) and registers the kernel; returns its target name."""
  name, source = generate(plan, count_dtype)
  if not kernel_build.is_registered(name):
    kernel_build.register(name, kernel_build.build(source), name)
  return name


def _union_pattern_cpu_lowering(ctx, *args, plan: UnionPlan):
  choice = settings.lowering
  if choice != "portable" and kernel_build.compiler() is None:
    kernel_build.warn_no_compiler()
    reason = "no compiler"
  else:
    reason = "portable" if choice == "portable" else kernel_reason(plan)
  last_decisions.append((plan, reason))
  if reason != "kernel":
    return _union_pattern_portable_lowering(ctx, *args, plan=plan)
  name = ensure_registered(plan, ctx.avals_out[-1].dtype)
  return jax.ffi.ffi_lowering(name)(ctx, *args)


union_pattern_p.def_impl(_union_pattern_impl)
union_pattern_p.def_abstract_eval(_union_pattern_abstract_eval)
ad.primitive_jvps[union_pattern_p] = _union_pattern_jvp
batching.primitive_batchers[union_pattern_p] = _union_pattern_batching_rule
mlir.register_lowering(union_pattern_p, _union_pattern_portable_lowering)
mlir.register_lowering(union_pattern_p, _union_pattern_cpu_lowering, platform="cpu")
