"""The union pattern as a primitive, with a generated C co-iteration kernel on CPU.

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
sum, fill. The kernel returns exactly the buffers of the portable rule, bit for
bit (padding and capacity overflow included). Plans without a kernel run the
portable rule; :data:`FALLBACKS` lists why, :data:`last_decisions` records it.

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


@dataclasses.dataclass(frozen=True)
class _Variant:
  """What the C text depends on: everything else (sizes, capacities, offsets) is read at
  run time from the buffers' dims and a small ``params`` operand (see :func:`params`)."""
  n_parts: int
  idx_t: str
  cnt_t: str
  dest: bool
  val_t: str | None = None     # the summed values' C type (jscorch_union_sum), or None


#: Value dtypes the fused sum kernel handles (others run the pattern kernel and a gather).
VAL_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
             np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t"}


_CTYPE = {np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t"}


def _variant(plan: UnionPlan, count_dtype, val_dtype=None) -> _Variant:
  return _Variant(n_parts=len(plan.parts), idx_t=_CTYPE[np.dtype(plan.out.index_dtype)],
                  cnt_t=_CTYPE[np.dtype(count_dtype)], dest=plan.dest and val_dtype is None,
                  val_t=None if val_dtype is None else VAL_CTYPE[np.dtype(val_dtype)])


def params(plan: UnionPlan) -> np.ndarray:
  """The run-time sizes the dims do not carry, int64 `[2 + 3 * n_parts]` (storage order):
  the output's columns, every part's columns, row offsets and column offsets, and the
  number of values per entry (block size)."""
  out = plan.out
  order = out.format.mode_ordering
  offs = [tuple(o) if o is not None else (0,) * out.n_sparse for o in plan.offsets]
  return np.asarray([out.level_sizes[1], *(l.level_sizes[1] for l in plan.parts),
                     *(int(o[order[0]]) for o in offs), *(int(o[order[1]]) for o in offs),
                     math.prod(out.block_shape)], np.int64)


def _emit_header(v: _Variant, name: str, plan: UnionPlan) -> str:
  return "\n".join([
      f"/* {name}: union pattern ({plan.func}) by a merge of sorted row segments.",
      "   Sizes come at run time: rows, capacities and batch from the buffers' dims, columns",
      "   and offsets from the params operand; one build serves every shape.",
      "   pass 1 counts the distinct columns of every row, a prefix sum places the rows,",
      "   pass 2 writes crd and the destination of every input entry. Parallel over rows. */",
      f"typedef {v.idx_t} idx_t;",
      f"typedef {v.cnt_t} cnt_t;",
      f"#define NPARTS {v.n_parts}",
      f"#define WANT_DEST {int(v.dest)}",
      f"#define WANT_SUM {int(v.val_t is not None)}   /* values summed here, not src */",
      f"typedef {v.val_t or 'float'} val_t;",
      "#define RET_COUNT (2 + WANT_DEST)     /* rets: pos, crd, [dest], count, src... | data */",
      "#define RET_SRC (RET_COUNT + 1)",
      "#define N_SRC_RETS (WANT_SUM ? 1 : NPARTS)",
      "#define ARG_PARAMS (2 * NPARTS + (WANT_SUM ? NPARTS : 0))",
      "/* sizes of the call, read through the args `a` of every function below */",
      "#define ROWS (a->rows)",
      "#define COLS (a->cols)",
      "#define NSE (a->nse)",
      "#define PART_ROWS (a->part_rows)",
      "#define PART_COLS (a->part_cols)",
      "#define PART_CAP (a->part_cap)",
      "#define ROW_OFF (a->row_off)",
      "#define COL_OFF (a->col_off)",
      "#define DEST_BASE (a->dest_base)",
  ])


# The merge, in three pieces; NPARTS is a compile-time constant (sizes are not), so gcc unrolls
# every loop over parts.
_SEGMENTS = r"""
typedef struct {
  int64_t rows, cols, nse;    /* the output's level sizes and capacity */
  int64_t part_rows[NPARTS], part_cols[NPARTS], part_cap[NPARTS];
  int64_t row_off[NPARTS], col_off[NPARTS], dest_base[NPARTS];
  const idx_t* pos[NPARTS];   /* this batch element's buffers */
  const idx_t* crd[NPARTS];
  int64_t* start;             /* ROWS + 1: output entries before each row */
  idx_t* out_crd;
  idx_t* dest;
  idx_t* src[NPARTS];         /* NSE each: the entry of part k at each leaf (PART_CAP: none) */
  int64_t blk;                /* values per entry (WANT_SUM) */
  const val_t* val[NPARTS];   /* WANT_SUM: the parts' values, [PART_CAP, blk] */
  val_t* out_val;             /* WANT_SUM: [NSE, blk], the sum of the parts at each leaf */
} union_args;

/* Leaf q takes entry i of part k (PART_CAP[k]: none). Without WANT_SUM that is src; with
   it the values, folded over the parts in order exactly as the gathers' sum in XLA:
   total = taken_0; total = total + taken_k (0 where a part stores nothing). */
#if WANT_SUM
static inline void put_val(const union_args* a, int k, int64_t q, int64_t i) {
  val_t* o = a->out_val + q * a->blk;
  const int64_t blk = a->blk;
  if (i >= PART_CAP[k]) {
    if (k == 0) for (int64_t j = 0; j < blk; ++j) o[j] = (val_t)0;
    else for (int64_t j = 0; j < blk; ++j) o[j] = o[j] + (val_t)0;
    return;
  }
  const val_t* v = a->val[k] + i * blk;
  if (k == 0) for (int64_t j = 0; j < blk; ++j) o[j] = v[j];
  else for (int64_t j = 0; j < blk; ++j) o[j] = o[j] + v[j];
}
#define SET_SRC(k, q, i) put_val(a, (k), (q), (int64_t)(i))
#else
#define SET_SRC(k, q, i) (a->src[k][q] = (idx_t)(i))
#endif

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

/* Coordinates out of range at either end of a sorted segment are padding (they only occur
   in buffers that skipped validation): they go nowhere. */
static inline void trim(const union_args* a, int k, int64_t* lo, int64_t* hi, int write) {
  const idx_t* c = a->crd[k];
  while (*lo < *hi && c[*lo] < 0) {
    if (write && WANT_DEST) a->dest[DEST_BASE[k] + *lo] = (idx_t)NSE;
    ++*lo;
  }
  while (*hi > *lo && c[*hi - 1] >= PART_COLS[k]) {
    if (write && WANT_DEST) a->dest[DEST_BASE[k] + *hi - 1] = (idx_t)NSE;
    --*hi;
  }
}
"""

# Any number of parts: the smallest head column, then every part whose head equals it.
_MERGE_ANY = r"""
/* Merges output row r; with `write`, stores crd (below NSE) and the dest of every entry,
   leaves numbered from `at`. Returns the number of distinct columns. */
static inline int64_t merge_row(const union_args* a, int64_t r, int64_t at, int write) {
  int64_t p[NPARTS], e[NPARTS];
  for (int k = 0; k < NPARTS; ++k) {
    segment(a, k, r, &p[k], &e[k]);
    trim(a, k, &p[k], &e[k], write);
  }
  int64_t n = 0;
  for (;;) {
    int64_t c = INT64_MAX;
    for (int k = 0; k < NPARTS; ++k)
      if (p[k] < e[k] && (int64_t)a->crd[k][p[k]] + COL_OFF[k] < c)
        c = (int64_t)a->crd[k][p[k]] + COL_OFF[k];
    if (c == INT64_MAX) break;
    for (int k = 0; k < NPARTS; ++k) {
      int hit = p[k] < e[k] && (int64_t)a->crd[k][p[k]] + COL_OFF[k] == c;
      if (write && at + n < NSE) SET_SRC(k, at + n, hit ? p[k] : PART_CAP[k]);
      if (hit) {
        if (write && WANT_DEST) a->dest[DEST_BASE[k] + p[k]] = (idx_t)(at + n);
        ++p[k];
      }
    }
    if (write && at + n < NSE) a->out_crd[at + n] = (idx_t)c;
    ++n;
  }
  return n;
}
"""

# Two parts: a branch-free step while both segments last (the heads' order is data, not a
# predictable branch), then the tails. Both dest slots are written every step; the one whose
# head did not advance is written again, with its final leaf, when it does.
_MERGE_TWO = r"""
/* Writes leaves at, at + 1, ... of the merge of [p0, e0) and [p1, e1); `checked` (a
   constant after inlining) guards the leaves at or past NSE (only a row that may overflow). */
static inline int64_t fill_two(const union_args* a, int64_t p0, int64_t e0, int64_t p1,
                               int64_t e1, int64_t at, int checked) {
  const idx_t* c0 = a->crd[0];
  const idx_t* c1 = a->crd[1];
  idx_t* d0 = WANT_DEST ? a->dest + DEST_BASE[0] : NULL;
  idx_t* d1 = WANT_DEST ? a->dest + DEST_BASE[1] : NULL;
  idx_t* oc = a->out_crd;
  int64_t q = at;
#if WANT_SUM
  if (a->blk == 1 && !checked) {
    /* scalar values: both heads are in range while both segments last, so each value is
       read and zeroed by an indexed select (a branch on which part stores the leaf
       mispredicts about every other step) */
    const val_t* v0 = a->val[0];
    const val_t* v1 = a->val[1];
    val_t* ov = a->out_val;
    while (p0 < e0 && p1 < e1) {
      int64_t x = (int64_t)c0[p0] + COL_OFF[0], y = (int64_t)c1[p1] + COL_OFF[1];
      int64_t g0 = x > y, g1 = y > x;
      const val_t pick0[2] = {v0[p0], (val_t)0}, pick1[2] = {v1[p1], (val_t)0};
      oc[q] = (idx_t)(x - g0 * (x - y));
      ov[q] = pick0[g0] + pick1[g1];
      p0 += 1 - g0;
      p1 += 1 - g1;
      ++q;
    }
  }
#endif
  while (p0 < e0 && p1 < e1) {
    int64_t x = (int64_t)c0[p0] + COL_OFF[0], y = (int64_t)c1[p1] + COL_OFF[1];
    if (WANT_DEST) {
      d0[p0] = (idx_t)q;
      d1[p1] = (idx_t)q;
    }
    /* arithmetic selects: gcc keeps them branch-free (ternaries became branches) */
    int64_t g0 = x > y, g1 = y > x;       /* part 0 (1) stores nothing at this leaf */
    if (!checked || q < NSE) {
      oc[q] = (idx_t)(x - g0 * (x - y));
      SET_SRC(0, q, p0 + g0 * (PART_CAP[0] - p0));
      SET_SRC(1, q, p1 + g1 * (PART_CAP[1] - p1));
    }
    p0 += 1 - g0;
    p1 += 1 - g1;
    ++q;
  }
  for (; p0 < e0; ++p0, ++q) {
    if (WANT_DEST) d0[p0] = (idx_t)q;
    if (!checked || q < NSE) {
      oc[q] = (idx_t)((int64_t)c0[p0] + COL_OFF[0]);
      SET_SRC(0, q, p0);
      SET_SRC(1, q, PART_CAP[1]);
    }
  }
  for (; p1 < e1; ++p1, ++q) {
    if (WANT_DEST) d1[p1] = (idx_t)q;
    if (!checked || q < NSE) {
      oc[q] = (idx_t)((int64_t)c1[p1] + COL_OFF[1]);
      SET_SRC(0, q, PART_CAP[0]);
      SET_SRC(1, q, p1);
    }
  }
  return q - at;
}

static inline int64_t merge_row(const union_args* a, int64_t r, int64_t at, int write) {
  int64_t p0, e0, p1, e1;
  segment(a, 0, r, &p0, &e0);
  segment(a, 1, r, &p1, &e1);
  trim(a, 0, &p0, &e0, write);
  trim(a, 1, &p1, &e1, write);
  if (write) {
    if (at + (e0 - p0) + (e1 - p1) <= NSE) return fill_two(a, p0, e0, p1, e1, at, 0);
    return fill_two(a, p0, e0, p1, e1, at, 1);
  }
  const idx_t* c0 = a->crd[0];
  const idx_t* c1 = a->crd[1];
  int64_t n = 0;
  while (p0 < e0 && p1 < e1) {
    int64_t x = (int64_t)c0[p0] + COL_OFF[0], y = (int64_t)c1[p1] + COL_OFF[1];
    p0 += x <= y;
    p1 += y <= x;
    ++n;
  }
  return n + (e0 - p0) + (e1 - p1);
}
"""

_COUNT_MERGE = r"""
static void count_merge(const void* args, int64_t lo, int64_t hi) {
  const union_args* a = (const union_args*)args;
  for (int64_t r = lo; r < hi; ++r) a->start[r + 1] = merge_row(a, r, 0, 0);
}
"""

# Two parts, columns few enough for a bitmap per chunk (L1/L2-resident): a row's size is
# n0 + n1 - |intersection|, counted by marking part 0's columns and testing part 1's (about
# twice as fast as the merge). Columns are clamped, so even unchecked garbage stays in bounds.
_COUNT_BITMAP = r"""
static void count_bitmap(const void* args, int64_t lo, int64_t hi) {
  const union_args* a = (const union_args*)args;
  uint64_t* bits = (uint64_t*)calloc(COLS / 64 + 1, sizeof(uint64_t));
  if (!bits) {
    for (int64_t r = lo; r < hi; ++r) a->start[r + 1] = merge_row(a, r, 0, 0);
    return;
  }
  for (int64_t r = lo; r < hi; ++r) {
    int64_t p0, e0, p1, e1, hits = 0;
    segment(a, 0, r, &p0, &e0);
    segment(a, 1, r, &p1, &e1);
    trim(a, 0, &p0, &e0, 0);
    trim(a, 1, &p1, &e1, 0);
    const idx_t* c0 = a->crd[0];
    const idx_t* c1 = a->crd[1];
    for (int64_t p = p0; p < e0; ++p) {
      uint64_t c = (uint64_t)((int64_t)c0[p] + COL_OFF[0]);
      c = c < (uint64_t)COLS ? c : (uint64_t)COLS;
      bits[c >> 6] |= 1ull << (c & 63);
    }
    for (int64_t p = p1; p < e1; ++p) {
      uint64_t c = (uint64_t)((int64_t)c1[p] + COL_OFF[1]);
      c = c < (uint64_t)COLS ? c : (uint64_t)COLS;
      hits += (int64_t)((bits[c >> 6] >> (c & 63)) & 1);
    }
    for (int64_t p = p0; p < e0; ++p) {      /* every marked word belongs to this row */
      uint64_t c = (uint64_t)((int64_t)c0[p] + COL_OFF[0]);
      bits[(c < (uint64_t)COLS ? c : (uint64_t)COLS) >> 6] = 0;
    }
    a->start[r + 1] = (e0 - p0) + (e1 - p1) - hits;
  }
  free(bits);
}
"""

#: Largest column count whose bitmap (COLS / 8 bytes per chunk) the two-part count uses.
BITMAP_COLS = 1 << 22

_PASSES = r"""
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
static inline const XLA_FFI_Buffer* arg_buf(XLA_FFI_CallFrame* cf, int64_t i) {{
  return (const XLA_FFI_Buffer*)cf->args.args[i];
}}
static inline const XLA_FFI_Buffer* ret_buf(XLA_FFI_CallFrame* cf, int64_t i) {{
  return (const XLA_FFI_Buffer*)cf->rets.rets[i];
}}
/* The last dim of a buffer (1 for a scalar), and the product of the others. */
static inline int64_t last_dim(const XLA_FFI_Buffer* b) {{
  return b->rank ? b->dims[b->rank - 1] : 1;
}}
static inline int64_t elements(const XLA_FFI_Buffer* b) {{
  int64_t n = 1;
  for (int64_t d = 0; d < b->rank; ++d) n *= b->dims[d];
  return n;
}}
static inline int64_t lead_dims(const XLA_FFI_Buffer* b) {{
  int64_t n = 1;
  for (int64_t d = 0; d + 1 < b->rank; ++d) n *= b->dims[d];
  return n;
}}

/* Count pass: a bitmap for two parts and few enough columns, else the merge. */
static void count_rows(XLA_FFI_CallFrame* cf, union_args* a, const int64_t* bounds,
                       int64_t chunks) {{
#if NPARTS == 2
  if (COLS <= {BITMAP_COLS}LL) {{
    jscorch_parallel_for(cf, count_bitmap, a, bounds, chunks);
    return;
  }}
#endif
  jscorch_parallel_for(cf, count_merge, a, bounds, chunks);
}}

XLA_FFI_Error* {name}(XLA_FFI_CallFrame* cf) {{
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  if (cf->args.size != ARG_PARAMS + 1 || cf->rets.size != RET_SRC + N_SRC_RETS)
    return jscorch_error(cf, "{name}: wrong number of buffers");
  union_args args;
  union_args* a = &args;
  const XLA_FFI_Buffer* prm = arg_buf(cf, ARG_PARAMS);
  if (prm->dtype != XLA_FFI_DataType_S64 || prm->rank != 1 || prm->dims[0] != 2 + 3 * NPARTS)
    return jscorch_error(cf, "{name}: params must be int64 [2 + 3 * NPARTS]");
  const int64_t* p = (const int64_t*)prm->data;
  const XLA_FFI_Buffer* ocrd = ret_buf(cf, 1);
  const int64_t batch = lead_dims(ocrd);
  a->rows = last_dim(ret_buf(cf, 0)) - 1;
  a->nse = last_dim(ocrd);
  a->cols = p[0];
  a->blk = p[1 + 3 * NPARTS];
  int64_t ndest = 0;
  for (int k = 0; k < NPARTS; ++k) {{
    const XLA_FFI_Buffer* pb = arg_buf(cf, 2 * k);
    const XLA_FFI_Buffer* cb = arg_buf(cf, 2 * k + 1);
    a->part_rows[k] = last_dim(pb) - 1;
    a->part_cap[k] = last_dim(cb);
    a->part_cols[k] = p[1 + k];
    a->row_off[k] = p[1 + NPARTS + k];
    a->col_off[k] = p[1 + 2 * NPARTS + k];
    a->dest_base[k] = ndest;
    ndest += a->part_cap[k];
    if (lead_dims(pb) != batch || lead_dims(cb) != batch || a->part_rows[k] < 0 ||
        (!WANT_SUM && (last_dim(ret_buf(cf, RET_SRC + k)) != a->nse ||
                       lead_dims(ret_buf(cf, RET_SRC + k)) != batch)) ||
        (WANT_SUM && elements(arg_buf(cf, 2 * NPARTS + k)) != batch * a->part_cap[k] * a->blk))
      return jscorch_error(cf, "{name}: buffer shapes do not agree");
  }}
  if (ROWS < 0 || lead_dims(ret_buf(cf, 0)) != batch || a->blk < 0 ||
      (WANT_SUM && elements(ret_buf(cf, RET_SRC)) != batch * NSE * a->blk) ||
      (WANT_DEST && (last_dim(ret_buf(cf, 2)) != ndest || lead_dims(ret_buf(cf, 2)) != batch)))
    return jscorch_error(cf, "{name}: buffer shapes do not agree");
  idx_t* out_pos = (idx_t*)jscorch_ret(cf, 0);
  idx_t* out_crd = (idx_t*)jscorch_ret(cf, 1);
  idx_t* dest = WANT_DEST ? (idx_t*)jscorch_ret(cf, 2) : NULL;
  cnt_t* count = (cnt_t*)jscorch_ret(cf, RET_COUNT);
  int64_t* start = (int64_t*)malloc(sizeof(int64_t) * (ROWS + 1));
  int64_t n_chunks = 4 * jscorch_num_threads(cf);
  int64_t* bounds = (int64_t*)malloc(sizeof(int64_t) * (n_chunks + 1));
  if (!start || !bounds) {{
    free(start); free(bounds);
    return jscorch_error(cf, "{name}: out of memory");
  }}
  for (int64_t b = 0; b < batch; ++b) {{
    for (int k = 0; k < NPARTS; ++k) {{
      a->pos[k] = (const idx_t*)jscorch_arg(cf, 2 * k) + b * (PART_ROWS[k] + 1);
      a->crd[k] = (const idx_t*)jscorch_arg(cf, 2 * k + 1) + b * PART_CAP[k];
    }}
    a->start = start;
    a->out_crd = out_crd + b * NSE;
    a->dest = WANT_DEST ? dest + b * ndest : NULL;
    for (int k = 0; k < NPARTS; ++k) {{
      if (WANT_SUM)
        a->val[k] = (const val_t*)jscorch_arg(cf, 2 * NPARTS + k) + b * PART_CAP[k] * a->blk;
      else a->src[k] = (idx_t*)jscorch_ret(cf, RET_SRC + k) + b * NSE;
    }}
    if (WANT_SUM) a->out_val = (val_t*)jscorch_ret(cf, RET_SRC) + b * NSE * a->blk;
    /* entries outside every row segment (padding) go nowhere */
    for (int k = 0; k < NPARTS && WANT_DEST; ++k) {{
      int64_t s, e;
      s = a->pos[k][0]; s = s < 0 ? 0 : (s > PART_CAP[k] ? PART_CAP[k] : s);
      e = a->pos[k][PART_ROWS[k]]; e = e < s ? s : (e > PART_CAP[k] ? PART_CAP[k] : e);
      idx_t* d = a->dest + DEST_BASE[k];
      for (int64_t q = 0; q < s; ++q) d[q] = (idx_t)NSE;
      for (int64_t q = e; q < PART_CAP[k]; ++q) d[q] = (idx_t)NSE;
    }}
    int64_t chunks = work_before(a, ROWS) < 32768 ? 1 : n_chunks;
    chunks = jscorch_split(ROWS, work_before, a, chunks, bounds);
    start[0] = 0;
    count_rows(cf, a, bounds, chunks);
    for (int64_t r = 0; r < ROWS; ++r) start[r + 1] += start[r];
    jscorch_parallel_for(cf, fill_rows, a, bounds, chunks);
    idx_t* pos = out_pos + b * (ROWS + 1);
    for (int64_t r = 0; r <= ROWS; ++r) pos[r] = (idx_t)(start[r] < NSE ? start[r] : NSE);
    for (int64_t q = start[ROWS]; q < NSE; ++q) {{
      a->out_crd[q] = (idx_t)COLS;
      for (int k = 0; k < NPARTS; ++k) SET_SRC(k, q, PART_CAP[k]);
    }}
    count[b] = (cnt_t)start[ROWS];
  }}
  free(start);
  free(bounds);
  return NULL;
}}
"""


def generate(plan: UnionPlan, count_dtype, val_dtype=None) -> tuple[str, str]:
  """``(target name, C source)`` of the kernel of ``plan`` (which must have one).

  The source depends only on the number of parts, the index and count dtypes and whether
  ``dest`` is returned (:class:`_Variant`): every shape, capacity and offset of that
  variant runs the same build (sizes are read at run time).
  """
  v = _variant(plan, count_dtype, val_dtype)
  mode = ("sum_" + v.val_t.replace("_t", "")) if v.val_t else ("dest" if v.dest else "src")
  name = f"jscorch_union_{v.n_parts}_{v.idx_t[:-2]}_{v.cnt_t[:-2]}_{mode}"
  merge = _MERGE_TWO if v.n_parts == 2 else _MERGE_ANY
  count = (_COUNT_BITMAP if v.n_parts == 2 else "") + _COUNT_MERGE
  return name, "\n".join([RUNTIME, _emit_header(v, name, plan), _SEGMENTS, merge, count,
                          _PASSES, _emit_handler(name)])


def ensure_registered(plan: UnionPlan, count_dtype, val_dtype=None) -> str:
  """Builds (or loads from cache) and registers the kernel; returns its target name."""
  name, source = generate(plan, count_dtype, val_dtype)
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
# VAL_CTYPE.
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
      taken = data.at[src].get(mode="fill", fill_value=0)
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
            and kernel_reason(plan) == "kernel" and val_dtype in VAL_CTYPE
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
