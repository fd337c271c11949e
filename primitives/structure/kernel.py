"""The CPU kernel of ``jscorch_structure``: generated C behind the typed XLA FFI.

One C function per :class:`~.plan.StructurePlan`, with the formats, sizes and
capacities baked in as constants. Per batch element it

1. gathers every entry's coordinates in the destination's storage order (from the
   coordinate list, or by expanding the source's ``pos`` / walking its levels),
   dropping entries with a coordinate out of range (padding);
2. sorts the entries with one stable counting sort per destination level
   (least significant first; 16-bit radix digits for very large levels), skipping
   the passes the source's order already provides -- so CSR -> CSC is a single
   histogram / prefix-sum / scatter;
3. walks the sorted entries once, appending to each level (``pos`` counts, ``crd``)
   and merging equal coordinates where the destination is unique.

It computes integer structure only -- with duplicates summed, ``dest[i]``, the output
slot of entry ``i`` (``nse`` for padding or overflow); otherwise ``source[s]``, the
entry of slot ``s`` (``n`` for none) -- and XLA moves the values. Batch elements run in
parallel on XLA's thread pool.
"""
from __future__ import annotations

import collections
import hashlib

import jax

from .. import kernel_build
from ..c_runtime import RUNTIME
from ..settings import settings
from .plan import (
  COMPRESSED_CODE,
  DENSE_CODE,
  StructurePlan,
  entry_level,
  level_codes,
  np_dtype_name,
)

#: Plans that run the portable rule although kernels are on, by reason.
FALLBACKS = {
    "empty": "a dimension, capacity or batch of size zero",
    "no compiler": "no C compiler on this machine",
}

#: The most recent decisions, (plan, "kernel" | "portable" | fallback reason), newest last.
last_decisions: collections.deque = collections.deque(maxlen=64)


def _ints(values) -> str:
  return "{" + ", ".join(str(int(v)) for v in values) + "}" if values else "{0}"


def _header(plan: StructurePlan) -> str:
  dst = plan.dst
  src = "coordinates" if plan.src is None else f"{plan.src.format!r} {plan.src.shape} " \
      f"nse={plan.src.nse}"
  return (f"/* jscorch structure kernel\n"
          f"   from: {src} ({plan.n} entries)\n"
          f"   to:   {dst.format!r} {dst.shape} nse={dst.nse}\n"
          f"   sort: destination levels {plan.sort_levels} (least significant first)\n"
          f"   duplicates: {'summed' if plan.sums else 'kept'} */\n")


def _constants(plan: StructurePlan) -> str:
  dst = plan.dst
  lines = [
      f"typedef {np_dtype_name(dst.index_dtype)} didx_t;",
      f"#define L {plan.n_levels}",
      f"#define N_IN {plan.n}LL",
      f"typedef {'int32_t' if plan.n < 2**31 - 1 else 'int64_t'} ord_t;",
      f"#define NSE {dst.nse}LL",
      f"#define SUMS {int(plan.sums)}",
      f"#define PASS {int(plan.passthrough)}",
      f"#define PASS_E {plan.entry_level if plan.passthrough else 0}",
      f"#define PASS_PCAP {dst.parent_capacity(plan.entry_level) if plan.passthrough else 1}LL",
      f"#define PASS_N {len(plan.computed_levels) if plan.passthrough else 0}",
      f"static const int PASS_LEVEL[] = "
      f"{_ints(plan.computed_levels if plan.passthrough else ())};",
      f"#define N_SORT {len(plan.sort_levels)}",
      f"static const int SORT_LEVEL[] = {_ints(plan.sort_levels)};",
      f"static const int DST_KIND[L] = {_ints(level_codes(dst))};",
      f"static const int DST_UNIQUE[L] = {_ints(l.unique for l in dst.format.levels)};",
      f"static const int64_t DST_SIZE[L] = {_ints(dst.level_sizes)};",
      f"static const int64_t DST_CAP[L] = {_ints(dst.capacities)};",
      "static const int64_t DST_PCAP[L] = "
      f"{_ints(dst.parent_capacity(k) for k in range(plan.n_levels))};",
  ]
  if plan.src is None:
    lines.append("#define FROM_LEVELS 0")
    lines.append("typedef didx_t sidx_t;")
  else:
    src = plan.src
    lines += [
        "#define FROM_LEVELS 1",
        f"typedef {np_dtype_name(src.index_dtype)} sidx_t;",
        f"static const int SRC_KIND[L] = {_ints(level_codes(src))};",
        f"static const int64_t SRC_SIZE[L] = {_ints(src.level_sizes)};",
        f"static const int64_t SRC_CAP[L] = {_ints(src.capacities)};",
        f"static const int64_t SRC_PCAP[L] = "
        f"{_ints(src.parent_capacity(k) for k in range(plan.n_levels))};",
        f"static const int SRC_TO_DST[L] = {_ints(plan.src_to_dst)};",
    ]
  return "\n".join(lines) + "\n"


_BODY = r"""
typedef struct {
  const void* in[2 * L + 1];      /* coordinates, or the source buffers in leaf order */
  void* out[2 * L + 2];           /* destination buffers, map, count */
  XLA_FFI_CallFrame* cf;          /* for XLA's thread pool */
  int64_t batch;
} structure_args;

/* Scratch memory reused across calls (per thread, grow-only): large temporaries would
   otherwise cost a page fault per 4 KiB on every call. */
static _Thread_local void* scratch_ptr[6];
static _Thread_local size_t scratch_len[6];

static void* scratch(int slot, size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (scratch_len[slot] < bytes) {
    free(scratch_ptr[slot]);
    scratch_ptr[slot] = malloc(bytes);
    scratch_len[slot] = scratch_ptr[slot] ? bytes : 0;
  }
  return scratch_ptr[slot];
}

/* Stable sort of ord[0..m) by co[ord[i] * L + k] in [0, size): one counting pass when
   the histogram is small, else 16-bit radix digits (least significant first). */
static void sort_by(const didx_t* co, int k, int64_t size, int64_t m, ord_t** ord, ord_t** tmp,
                    int64_t* hist, int64_t hist_cap) {
  int radix = size > hist_cap;
  int64_t buckets = radix ? ((int64_t)1 << 16) : size, mask = buckets - 1, bits = 0;
  while (radix && ((int64_t)1 << bits) < size) ++bits;
  for (int64_t shift = 0; shift == 0 || shift < bits; shift += 16) {
    ord_t* o = *ord;
    ord_t* t = *tmp;
    memset(hist, 0, sizeof(int64_t) * (buckets + 1));
    if (radix) {
      for (int64_t i = 0; i < m; ++i) hist[((co[(int64_t)o[i] * L + k] >> shift) & mask) + 1]++;
      for (int64_t v = 0; v < buckets; ++v) hist[v + 1] += hist[v];
      for (int64_t i = 0; i < m; ++i) {
        ord_t e = o[i];
        t[hist[(co[(int64_t)e * L + k] >> shift) & mask]++] = e;
      }
    } else {
      for (int64_t i = 0; i < m; ++i) hist[co[(int64_t)o[i] * L + k] + 1]++;
      for (int64_t v = 0; v < buckets; ++v) hist[v + 1] += hist[v];
      for (int64_t i = 0; i < m; ++i) { ord_t e = o[i]; t[hist[co[(int64_t)e * L + k]]++] = e; }
    }
    *ord = t;
    *tmp = o;
  }
}

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

/* The destination buffers of batch element b, with pos zeroed and crd set to padding. */
typedef struct {
  didx_t* pos[L];
  didx_t* crd[L];
  didx_t* map;           /* SUMS: the slot of each entry (dest); else the entry of each slot */
  didx_t* count;
  int64_t cnt[L], last_c[L], last_parent[L], last_child[L];
  int64_t rows, prev_slot, filled;
  int64_t prev[L];
  int has_prev;
} builder;

static void builder_init(builder* o, const structure_args* a, int64_t b) {
  int ob = 0;
  for (int k = 0; k < L; ++k) {
    o->pos[k] = NULL; o->crd[k] = NULL;
    if (DST_KIND[k] == 1) {
      o->pos[k] = (didx_t*)a->out[ob++] + b * (DST_PCAP[k] + 1);
      memset(o->pos[k], 0, sizeof(didx_t) * (DST_PCAP[k] + 1));
    }
    if (DST_KIND[k] != 0) {
      o->crd[k] = (didx_t*)a->out[ob++] + b * DST_CAP[k];
      if (DST_KIND[k] == 2)
        for (int64_t q = 0; q < DST_CAP[k]; ++q) o->crd[k][q] = (didx_t)DST_SIZE[k];
    }
    o->cnt[k] = 0; o->last_c[k] = -1; o->last_parent[k] = -1; o->last_child[k] = -1;
  }
  o->map = (didx_t*)a->out[ob] + b * (SUMS ? N_IN : NSE);
  o->count = (didx_t*)a->out[ob + 1] + b;
  if (!SUMS)
    for (int64_t q = 0; q < NSE; ++q) o->map[q] = (didx_t)N_IN;
  o->rows = 0;
  o->prev_slot = NSE;
  o->filled = 0;
  o->has_prev = 0;
}

/* Records that entry e goes to slot (NSE: nowhere). SUMS: dest[e] = slot, with every entry
   skipped before e (padding) marked NSE; else source[slot] = e. */
static inline void set_dest(builder* o, int64_t e, int64_t slot) {
#if SUMS
  if (e >= o->filled) {
    for (int64_t i = o->filled; i < e; ++i) o->map[i] = (didx_t)NSE;
    o->filled = e + 1;
  }
  o->map[e] = (didx_t)slot;
#else
  if (slot < NSE) o->map[slot] = (didx_t)e;
#endif
}

/* Appends entry e with coordinates row[] (entries arrive in destination order). */
static inline void append(builder* o, int64_t e, const int64_t* row) {
  if (SUMS && o->has_prev) {
    int same = 1;
    for (int k = 0; k < L; ++k) same &= row[k] == o->prev[k];
    if (same) { set_dest(o, e, o->prev_slot); return; }
  }
  for (int k = 0; k < L; ++k) o->prev[k] = row[k];
  o->has_prev = 1;
  ++o->rows;
  int64_t node = 0;
  for (int k = 0; k < L; ++k) {
    int64_t c = row[k];
    if (DST_KIND[k] == 0) {
      node = node * DST_SIZE[k] + c;
    } else if (DST_KIND[k] == 1) {
      int fresh = !DST_UNIQUE[k] || o->cnt[k] == 0 || c != o->last_c[k] ||
                  node != o->last_parent[k];
      if (fresh) {
        int64_t child = o->cnt[k]++;
        if (child < DST_CAP[k]) o->crd[k][child] = (didx_t)c;
        if (node < DST_PCAP[k]) o->pos[k][node + 1]++;
        o->last_c[k] = c; o->last_parent[k] = node; o->last_child[k] = child;
      }
      node = o->last_child[k];
    } else {
      if (node < DST_CAP[k]) o->crd[k][node] = (didx_t)c;
    }
  }
  o->prev_slot = node < NSE ? node : NSE;
  set_dest(o, e, o->prev_slot);
}

/* Prefix sums of the pos counts, the crd tails, the rest of dest and the count. */
static void builder_finish(builder* o) {
  int64_t count = -1;
  for (int k = 0; k < L; ++k) {
    if (DST_KIND[k] != 1) continue;
    int64_t run = 0;
    for (int64_t p = 0; p < DST_PCAP[k]; ++p) {
      run += o->pos[k][p + 1];
      o->pos[k][p + 1] = (didx_t)(run < DST_CAP[k] ? run : DST_CAP[k]);
    }
    for (int64_t q = o->cnt[k]; q < DST_CAP[k]; ++q) o->crd[k][q] = (didx_t)DST_SIZE[k];
    count = o->cnt[k];
  }
  if (SUMS)
    for (int64_t i = o->filled; i < N_IN; ++i) o->map[i] = (didx_t)NSE;
  *o->count = (didx_t)(count < 0 ? o->rows : count);
}

#define TRANSPOSE (L == 2 && N_SORT == 1 && SORT_LEVEL[0] == 0 && DST_KIND[0] == 0 && \
                   DST_KIND[1] == 1 && !SUMS)

/* Compares two rows by the sort keys after the most significant one. */
static inline int row_less(const didx_t* x, const didx_t* y) {
  for (int s = N_SORT - 2; s >= 0; --s) {
    int k = SORT_LEVEL[s];
    if (x[k] != y[k]) return x[k] < y[k];
  }
  return 0;
}

/* Stable sort of rows co2[lo..hi) (with their entries ord[lo..hi)) by row_less: insertion
   sort for short buckets, else a merge sort of local indices and one permutation. */
static void bucket_sort(didx_t* co2, ord_t* ord, int64_t lo, int64_t hi, ord_t* idx, ord_t* aux,
                        didx_t* rtmp) {
  int64_t k = hi - lo;
  if (k <= 24) {
    for (int64_t i = lo + 1; i < hi; ++i) {
      didx_t r[L];
      for (int c = 0; c < L; ++c) r[c] = co2[i * L + c];
      ord_t e = ord[i];
      int64_t j = i;
      while (j > lo && row_less(r, co2 + (j - 1) * L)) {
        for (int c = 0; c < L; ++c) co2[j * L + c] = co2[(j - 1) * L + c];
        ord[j] = ord[j - 1];
        --j;
      }
      for (int c = 0; c < L; ++c) co2[j * L + c] = r[c];
      ord[j] = e;
    }
    return;
  }
  ord_t* a = idx + lo;
  ord_t* t = aux + lo;
  for (int64_t i = 0; i < k; ++i) a[i] = (ord_t)i;
  for (int64_t width = 1; width < k; width *= 2) {
    for (int64_t start = 0; start < k; start += 2 * width) {
      int64_t mid = start + width < k ? start + width : k;
      int64_t end = start + 2 * width < k ? start + 2 * width : k;
      int64_t p = start, q = mid, w = start;
      while (p < mid && q < end)
        t[w++] = row_less(co2 + (lo + a[q]) * L, co2 + (lo + a[p]) * L) ? a[q++] : a[p++];
      while (p < mid) t[w++] = a[p++];
      while (q < end) t[w++] = a[q++];
    }
    ord_t* swap = a; a = t; t = swap;
  }
  /* a holds the sorted local order; t is free: permute entries and rows */
  for (int64_t i = 0; i < k; ++i) {
    t[i] = ord[lo + a[i]];
    for (int c = 0; c < L; ++c) rtmp[(lo + i) * L + c] = co2[(lo + a[i]) * L + c];
  }
  for (int64_t i = 0; i < k; ++i) {
    ord[lo + i] = t[i];
    for (int c = 0; c < L; ++c) co2[(lo + i) * L + c] = rtmp[(lo + i) * L + c];
  }
}

/* The counting-sort transpose on several threads: each chunk of the outermost source
   positions counts its entries per destination row, a serial prefix sum turns the
   counts into each chunk's write offsets (chunks in order, so the sort stays stable),
   then every chunk scatters its own entries. */
typedef struct {
  const structure_args* a;
  int64_t b, rows;
  int64_t* offset;                /* [chunk][row] counts, then write offsets */
  const int64_t* bounds;          /* outermost positions of each chunk */
  didx_t* crd;
  didx_t* map;
} transpose_args;

static void transpose_count(const void* p, int64_t lo, int64_t hi) {
  const transpose_args* t = (const transpose_args*)p;
  const structure_args* a = t->a;
  int64_t b = t->b;
  DECLARE_SOURCE(a, b)
  for (int64_t c = lo; c < hi; ++c) {
    int64_t* h = t->offset + c * t->rows;
    FOR_EACH_ENTRY_IN(t->bounds[c], t->bounds[c + 1], if (ok) h[row[0]]++;)
  }
}

static void transpose_scatter(const void* p, int64_t lo, int64_t hi) {
  const transpose_args* t = (const transpose_args*)p;
  const structure_args* a = t->a;
  int64_t b = t->b;
  DECLARE_SOURCE(a, b)
  for (int64_t c = lo; c < hi; ++c) {
    int64_t* next = t->offset + c * t->rows;
    FOR_EACH_ENTRY_IN(t->bounds[c], t->bounds[c + 1],
      if (ok) {
        int64_t slot = next[row[0]]++;
        if (slot < DST_CAP[1]) t->crd[slot] = (didx_t)row[1];
        if (slot < NSE) t->map[slot] = (didx_t)e;
      })
  }
}

static int transpose_parallel(const structure_args* a, int64_t b, int64_t chunks, builder* o) {
  const int64_t rows = DST_SIZE[0];
  int64_t* offset = (int64_t*)scratch(3, sizeof(int64_t) * chunks * rows);
  int64_t* bounds = (int64_t*)scratch(4, sizeof(int64_t) * (2 * chunks + 2));
  if (!offset || !bounds) return -1;
  int64_t* units = bounds + chunks + 1;
  DECLARE_SOURCE(a, b)
  int64_t olo, ohi;
  OUTER_EXTENT(olo, ohi)
  for (int64_t c = 0; c <= chunks; ++c) {
    bounds[c] = olo + (ohi - olo) * c / chunks;
    units[c] = c;
  }
  memset(offset, 0, sizeof(int64_t) * chunks * rows);
  transpose_args t = {a, b, rows, offset, bounds, o->crd[1], o->map};
  jscorch_parallel_for(a->cf, transpose_count, &t, units, chunks);
  didx_t* pos = o->pos[1];
  int64_t run = 0;
  for (int64_t v = 0; v < rows; ++v) {
    for (int64_t c = 0; c < chunks; ++c) {
      int64_t k = offset[c * rows + v];
      offset[c * rows + v] = run;
      run += k;
    }
    pos[v + 1] = (didx_t)(run < DST_CAP[1] ? run : DST_CAP[1]);
  }
  jscorch_parallel_for(a->cf, transpose_scatter, &t, units, chunks);
  for (int64_t q = run; q < DST_CAP[1]; ++q) o->crd[1][q] = (didx_t)DST_SIZE[1];
  *o->count = (didx_t)run;
  return 0;
}

/* Order-preserving conversions (PASS): entries keep their slots, so the kernel writes
   only the entry level's pos (a histogram of the dense coordinates above it, then a
   prefix sum) and the per-entry crd the source does not already hold; values and the
   other crd are the input's. The walk runs in chunks of outermost source positions on
   XLA's thread pool (per-chunk histograms, summed in order). */
/* per-chunk histogram rows, a cache line apart (no false sharing) */
#define PASS_STRIDE ((PASS_PCAP + 15) / 8 * 8)

typedef struct {
  const structure_args* a;
  int64_t b;
  int64_t* counts;                /* [chunk][parent] (row stride PASS_STRIDE) */
  const int64_t* bounds;          /* outermost positions of each chunk */
  int64_t* cover;                 /* [chunk][2]: the entries each chunk wrote, [lo, hi) */
} pass_args;

static inline void pass_pad(didx_t* const* out_crd, int64_t lo, int64_t hi) {
  for (int i = 0; i < PASS_N; ++i) {
    const didx_t pad = (didx_t)DST_SIZE[PASS_LEVEL[i]];
    for (int64_t q = lo; q < hi; ++q) out_crd[i][q] = pad;
  }
}

static void pass_walk(const void* p, int64_t lo, int64_t hi) {
  const pass_args* t = (const pass_args*)p;
  const structure_args* a = t->a;
  int64_t b = t->b;
  DECLARE_SOURCE(a, b)
  didx_t* out_crd[PASS_N + 1];
  for (int i = 0; i < PASS_N; ++i) out_crd[i] = (didx_t*)a->out[1 + i] + b * NSE;
  for (int64_t c = lo; c < hi; ++c) {
    int64_t* h = t->counts + c * PASS_STRIDE;
    int64_t here = 0;                 /* (PASS_E == 0: one parent, counted in a register) */
    int64_t first = -1, cursor = 0;   /* every entry in [first, cursor) is written */
#if PASS_RUNS
    /* the computed crd are constant over each innermost run of entries: fill runs */
    FOR_EACH_RUN_IN(t->bounds[c], t->bounds[c + 1],
      (void)ok;
      int64_t node = 0;
      int in = 1;
      for (int k = 0; k < PASS_E; ++k) {
        in &= row[k] >= 0 && row[k] < DST_SIZE[k];
        node = node * DST_SIZE[k] + row[k];
      }
      if (PASS_E == 0) here += rhi - rlo;
      else if (in) h[node] += rhi - rlo;
      if (rhi > NSE) rhi = NSE;
      if (rlo < rhi) {
        if (first < 0) first = cursor = rlo;
        if (rlo > cursor) pass_pad(out_crd, cursor, rlo);
        for (int i = 0; i < PASS_N; ++i) {
          int64_t v = row[PASS_LEVEL[i]], size = DST_SIZE[PASS_LEVEL[i]];
          const didx_t x = (didx_t)(v >= 0 && v < size ? v : size);
          didx_t* o = out_crd[i];
          for (int64_t q = rlo; q < rhi; ++q) o[q] = x;
        }
        if (rhi > cursor) cursor = rhi;
      })
#else
    FOR_EACH_ENTRY_IN(t->bounds[c], t->bounds[c + 1],
      (void)ok;
      int64_t node = 0;
      int in = 1;
      for (int k = 0; k < PASS_E; ++k) {
        in &= row[k] >= 0 && row[k] < DST_SIZE[k];
        node = node * DST_SIZE[k] + row[k];
      }
      if (PASS_E == 0) here += in;
      else if (in) h[node]++;
      if (PASS_N && e < NSE) {
        if (first < 0) first = cursor = e;
        if (e > cursor) pass_pad(out_crd, cursor, e);   /* (skipped positions: padding) */
        if (e >= cursor) cursor = e + 1;
        for (int i = 0; i < PASS_N; ++i) {
          int64_t v = row[PASS_LEVEL[i]], size = DST_SIZE[PASS_LEVEL[i]];
          out_crd[i][e] = (didx_t)(v >= 0 && v < size ? v : size);
        }
      })
#endif
    if (PASS_E == 0) h[0] = here;
    t->cover[2 * c] = first < 0 ? 0 : first;
    t->cover[2 * c + 1] = first < 0 ? 0 : cursor;
  }
}

static int pass_one(const structure_args* a, int64_t b) {
  int64_t chunks = 1;
  if (a->batch == 1 && N_IN >= ((int64_t)1 << 15)) {
    int64_t threads = jscorch_num_threads(a->cf);
    chunks = threads < 1 ? 1 : threads < 8 ? threads : 8;
  }
  int64_t* counts = (int64_t*)scratch(3, sizeof(int64_t) * chunks * PASS_STRIDE);
  int64_t* bounds = (int64_t*)scratch(4, sizeof(int64_t) * (4 * chunks + 2));
  if (!counts || !bounds) return -1;
  int64_t* units = bounds + chunks + 1;
  int64_t* cover = units + chunks + 1;
  DECLARE_SOURCE(a, b)
  int64_t olo, ohi;
  OUTER_EXTENT(olo, ohi)
  for (int64_t c = 0; c <= chunks; ++c) {
    bounds[c] = olo + (ohi - olo) * c / chunks;
    units[c] = c;
  }
  memset(counts, 0, sizeof(int64_t) * chunks * PASS_STRIDE);
  pass_args t = {a, b, counts, bounds, cover};
  if (chunks > 1) jscorch_parallel_for(a->cf, pass_walk, &t, units, chunks);
  else pass_walk(&t, 0, 1);
  if (PASS_N) {
    /* entries no chunk wrote are padding: fill the gaps between the chunks' ranges */
    didx_t* out_crd[PASS_N + 1];
    for (int i = 0; i < PASS_N; ++i) out_crd[i] = (didx_t*)a->out[1 + i] + b * NSE;
    for (int64_t c = 1; c < chunks; ++c)          /* (insertion sort by range start) */
      for (int64_t d = c; d > 0 && cover[2 * d] < cover[2 * d - 2]; --d) {
        int64_t l = cover[2 * d], h = cover[2 * d + 1];
        cover[2 * d] = cover[2 * d - 2]; cover[2 * d + 1] = cover[2 * d - 1];
        cover[2 * d - 2] = l; cover[2 * d - 1] = h;
      }
    int64_t done = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      if (cover[2 * c] > done) pass_pad(out_crd, done, cover[2 * c]);
      if (cover[2 * c + 1] > done) done = cover[2 * c + 1];
    }
    if (done < NSE) pass_pad(out_crd, done, NSE);
  }
  didx_t* pos = (didx_t*)a->out[0] + b * (PASS_PCAP + 1);
  int64_t run = 0;
  pos[0] = 0;
  for (int64_t v = 0; v < PASS_PCAP; ++v) {
    for (int64_t c = 0; c < chunks; ++c) run += counts[c * PASS_STRIDE + v];
    pos[v + 1] = (didx_t)(run < NSE ? run : NSE);
  }
  return 0;
}

/* One batch element. Returns 0, or -1 when out of memory. */
static int structure_one(const structure_args* a, int64_t b) {
  if (PASS) return pass_one(a, b);
  const int64_t n = N_IN;
  builder o;
  builder_init(&o, a, b);
  DECLARE_SOURCE(a, b)
  if (N_SORT == 0) {
    /* already in destination order: one streaming pass */
    FOR_EACH_ENTRY(if (ok) append(&o, e, row);)
    builder_finish(&o);
    return 0;
  }
  if (TRANSPOSE && a->batch == 1 && n >= ((int64_t)1 << 15)) {
    int64_t threads = jscorch_num_threads(a->cf);
    if (threads > 1) return transpose_parallel(a, b, threads < 8 ? threads : 8, &o);
  }
  if (TRANSPOSE) {
    /* a counting sort by the first destination level is the whole conversion:
       histogram, prefix sum (= pos), scatter (slot = running offset of its row) */
    didx_t* pos = o.pos[1];
    didx_t* crd = o.crd[1];
    int64_t* next = (int64_t*)scratch(3, sizeof(int64_t) * (DST_SIZE[0] + 1));
    if (!next) return -1;
    FOR_EACH_ENTRY(if (ok) pos[row[0] + 1]++;)
    int64_t run = 0;
    for (int64_t p = 0; p < DST_SIZE[0]; ++p) {
      next[p] = run;
      run += pos[p + 1];
      pos[p + 1] = (didx_t)(run < DST_CAP[1] ? run : DST_CAP[1]);
    }
    FOR_EACH_ENTRY(
      if (ok) {
        int64_t slot = next[row[0]]++;
        if (slot < DST_CAP[1]) crd[slot] = (didx_t)row[1];
        set_dest(&o, e, slot < NSE ? slot : NSE);
      })
    for (int64_t q = run; q < DST_CAP[1]; ++q) crd[q] = (didx_t)DST_SIZE[1];
    if (SUMS)
      for (int64_t i = o.filled; i < n; ++i) o.map[i] = (didx_t)NSE;
    *o.count = (didx_t)run;
    return 0;
  }
  if (DST_SIZE[SORT_LEVEL[N_SORT - 1]] > 0 && DST_SIZE[SORT_LEVEL[N_SORT - 1]] <= 4 * n + 1024) {
    /* a counting sort by the most significant key into buckets (rows travel with their
       entries), then a stable sort of each bucket by the remaining keys */
    const int msd = SORT_LEVEL[N_SORT - 1];
    const int64_t buckets = DST_SIZE[msd];
    didx_t* co2 = (didx_t*)scratch(0, sizeof(didx_t) * n * L);   /* rows in bucket order */
    didx_t* rtmp = (didx_t*)scratch(1, sizeof(didx_t) * n * L);
    ord_t* ord = (ord_t*)scratch(2, sizeof(ord_t) * n);
    int64_t* next = (int64_t*)scratch(3, sizeof(int64_t) * (buckets + 1));
    ord_t* idx = (ord_t*)scratch(4, sizeof(ord_t) * n);
    ord_t* aux = (ord_t*)scratch(5, sizeof(ord_t) * n);
    if (!co2 || !rtmp || !ord || !next || !idx || !aux) return -1;
    memset(next, 0, sizeof(int64_t) * (buckets + 1));
    FOR_EACH_ENTRY(if (ok) next[row[msd] + 1]++;)
    for (int64_t v = 0; v < buckets; ++v) next[v + 1] += next[v];
    FOR_EACH_ENTRY(
      if (ok) {
        int64_t slot = next[row[msd]]++;
        if (slot < n) {
          ord[slot] = (ord_t)e;
          for (int k = 0; k < L; ++k) co2[slot * L + k] = (didx_t)row[k];
        }
      })
    int64_t m = next[buckets - 1] < n ? next[buckets - 1] : n;
    if (N_SORT > 1) {
      for (int64_t v = 0; v < buckets; ++v) {
        int64_t lo = v ? next[v - 1] : 0, hi = next[v];
        if (hi > m) hi = m;
        if (hi - lo > 1) bucket_sort(co2, ord, lo, hi, idx, aux, rtmp);
      }
    }
    int64_t row[L];
    for (int64_t i = 0; i < m; ++i) {
      for (int k = 0; k < L; ++k) row[k] = (int64_t)co2[i * L + k];
      append(&o, (int64_t)ord[i], row);
    }
    builder_finish(&o);
    return 0;
  }
  /* large levels: gather, least-significant-first counting / radix passes, append */
  didx_t* co = (didx_t*)scratch(0, sizeof(didx_t) * n * L);   /* coordinates, entry-major */
  ord_t* ord = (ord_t*)scratch(2, sizeof(ord_t) * 2 * n);
  ord_t* tmp = ord + n;
  int64_t hist_cap = 2 * n > ((int64_t)1 << 16) ? 2 * n : ((int64_t)1 << 16);
  int64_t hist_len = 0;
  for (int s = 0; s < N_SORT; ++s) {
    int64_t size = DST_SIZE[SORT_LEVEL[s]];
    int64_t need = size > hist_cap ? ((int64_t)1 << 16) : size;
    if (need > hist_len) hist_len = need;
  }
  int64_t* hist = (int64_t*)scratch(3, sizeof(int64_t) * (hist_len + 1));
  if (!co || !ord || !hist) return -1;
  int64_t m = 0;
  FOR_EACH_ENTRY(
    if (ok && m < n) {                 /* (m < n unless pos is not monotone) */
      for (int k = 0; k < L; ++k) co[e * L + k] = (didx_t)row[k];
      ord[m++] = (ord_t)e;
    })
  for (int s = 0; s < N_SORT; ++s)
    sort_by(co, SORT_LEVEL[s], DST_SIZE[SORT_LEVEL[s]], m, &ord, &tmp, hist, hist_cap);
  int64_t row[L];
  for (int64_t i = 0; i < m; ++i) {
    int64_t x = (int64_t)ord[i];
    for (int k = 0; k < L; ++k) row[k] = (int64_t)co[x * L + k];
    append(&o, x, row);
  }
  builder_finish(&o);
  return 0;
}

typedef struct { const structure_args* a; _Atomic int failed; } batch_args;

static void batch_body(const void* p, int64_t lo, int64_t hi) {
  batch_args* ba = (batch_args*)p;
  for (int64_t b = lo; b < hi; ++b)
    if (structure_one(ba->a, b)) atomic_store(&ba->failed, 1);
}

XLA_FFI_Error* KERNEL_NAME(XLA_FFI_CallFrame* cf) {
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  structure_args a;
  int n_in = (int)cf->args.size, n_out = (int)cf->rets.size;
  if (n_in > 2 * L + 1 || n_out > 2 * L + 2 || n_out < 1)
    return jscorch_error(cf, "jscorch_structure: wrong number of buffers");
  for (int i = 0; i < n_in; ++i) a.in[i] = jscorch_arg(cf, i);
  for (int i = 0; i < n_out; ++i) a.out[i] = jscorch_ret(cf, i);
  XLA_FFI_Buffer* last = (XLA_FFI_Buffer*)cf->rets.rets[n_out - 1];
  int64_t batch = last->rank ? last->dims[0] : 1;
  a.cf = cf;
  a.batch = batch;
  batch_args ba;
  ba.a = &a;
  atomic_init(&ba.failed, 0);
  int64_t* bounds = (int64_t*)malloc(sizeof(int64_t) * (batch + 1));
  if (!bounds) return jscorch_error(cf, "jscorch_structure: out of memory");
  for (int64_t b = 0; b <= batch; ++b) bounds[b] = b;
  jscorch_parallel_for(cf, batch_body, &ba, bounds, batch);
  free(bounds);
  if (atomic_load(&ba.failed)) return jscorch_error(cf, "jscorch_structure: out of memory");
  return NULL;
}
"""


def kernel_name(plan: StructurePlan) -> str:
  return "jscorch_structure_" + hashlib.sha256(_body_source(plan).encode()).hexdigest()[:16]


def _runs(plan: StructurePlan) -> bool:
  """Passthrough with computed ``crd`` that all come from source levels above the source's
  entry level (constant over each innermost run), and a histogram keyed the same way:
  the walk can stop one level early and fill whole runs of entries."""
  if not plan.passthrough or not plan.computed_levels:
    return False
  e_src = entry_level(plan.src)
  return all(plan.dst_to_src[k] < e_src for k in range(plan.entry_level))


def _walk(plan: StructurePlan, runs: bool = False) -> str:
  """``DECLARE_SOURCE(a, b)`` and ``FOR_EACH_ENTRY(body)``: the loop nest over one batch
  element's entries in the source's storage order. ``body`` sees ``e`` (the entry),
  ``row`` (its coordinates in destination level order) and ``ok`` (all in range).
  A leaf no parent position reaches is never visited (it is padding)."""
  if plan.src is None:
    return ("#define DECLARE_SOURCE(a, b) "
            "const didx_t* coords = (const didx_t*)(a)->in[0] + (b) * N_IN * L;\n"
            "#define OUTER_EXTENT(lo, hi) (lo) = 0; (hi) = N_IN;\n"
            "#define FOR_EACH_ENTRY_IN(CLO, CHI, ...) \\\n"
            "  for (int64_t e = (CLO); e < N_IN && e < (CHI); ++e) { \\\n"
            "    int64_t row[L]; int ok = 1; \\\n"
            "    for (int k = 0; k < L; ++k) { \\\n"
            "      row[k] = (int64_t)coords[e * L + k]; \\\n"
            "      ok &= row[k] >= 0 && row[k] < DST_SIZE[k]; } \\\n"
            "    __VA_ARGS__ }\n")
  src = plan.src
  codes = level_codes(src)
  stop = entry_level(src) if runs else len(codes)
  decl, buf = [], 0
  for j, code in enumerate(codes):
    if code == COMPRESSED_CODE:
      decl.append(f"const sidx_t* spos{j} = (const sidx_t*)(a)->in[{buf}] + (b) * "
                  f"(SRC_PCAP[{j}] + 1);")
      buf += 1
    if code != DENSE_CODE:
      decl.append(f"const sidx_t* scrd{j} = (const sidx_t*)(a)->in[{buf}] + (b) * SRC_CAP[{j}];")
      buf += 1
  lines = []
  for j, code in enumerate(codes):
    if j > stop:
      break
    p = f"q{j - 1}" if j else "0"
    ok = f"ok{j - 1} && " if j else ""
    ind = "  " * (j + 1)
    if code == DENSE_CODE and j == 0:       # (the outermost loop runs over [CLO, CHI) only)
      lines.append(f"{ind}for (int64_t q0 = (CLO) > 0 ? (CLO) : 0; "
                   f"q0 < SRC_SIZE[0] && q0 < (CHI); ++q0) {{")
      lines.append(f"{ind}  int64_t c0 = q0;")
    elif code == DENSE_CODE:
      lines.append(f"{ind}for (int64_t q{j} = {p} * SRC_SIZE[{j}]; "
                   f"q{j} < ({p} + 1) * SRC_SIZE[{j}]; ++q{j}) {{")
      lines.append(f"{ind}  int64_t c{j} = q{j} - {p} * SRC_SIZE[{j}];")
    else:
      if code == COMPRESSED_CODE:
        lo = f"clamp64((int64_t)spos{j}[{p}], 0, SRC_CAP[{j}])"
        lines.append(f"{ind}int64_t lo{j} = {lo};")
        lines.append(f"{ind}int64_t hi{j} = clamp64((int64_t)spos{j}[{p} + 1], lo{j}, "
                     f"SRC_CAP[{j}]);")
      else:
        lines.append(f"{ind}int64_t lo{j} = {p} < SRC_CAP[{j}] ? {p} : SRC_CAP[{j}];")
        lines.append(f"{ind}int64_t hi{j} = {p} < SRC_CAP[{j}] ? {p} + 1 : SRC_CAP[{j}];")
      if j == 0:
        lines.append(f"{ind}if (lo0 < (CLO)) lo0 = (CLO);")
        lines.append(f"{ind}if (hi0 > (CHI)) hi0 = (CHI);")
      if j == stop:
        ok = f"ok{j - 1}" if j else "1"
        row = ", ".join(f"c{plan.dst_to_src[k]}" if plan.dst_to_src[k] < stop else "0"
                        for k in range(plan.n_levels))
        lines.append(f"{ind}{{ int64_t rlo = lo{j}, rhi = hi{j}; int ok = {ok}; "
                     f"int64_t row[L] = {{{row}}}; __VA_ARGS__ }}")
        break
      lines.append(f"{ind}for (int64_t q{j} = lo{j}; q{j} < hi{j}; ++q{j}) {{")
      lines.append(f"{ind}  int64_t c{j} = (int64_t)scrd{j}[q{j}];")
    lines.append(f"{ind}  int ok{j} = {ok}c{j} >= 0 && c{j} < SRC_SIZE[{j}];")
  last = len(codes) - 1
  if runs:
    lines += ["  " * (j + 1) + "}" for j in range(stop - 1, -1, -1)]
  else:
    ind = "  " * (last + 2)
    row = ", ".join(f"c{plan.dst_to_src[k]}" for k in range(plan.n_levels))
    lines.append(f"{ind}{{ int64_t e = q{last}; int ok = ok{last}; int64_t row[L] = {{{row}}}; "
                 "__VA_ARGS__ }")
    lines += ["  " * (j + 1) + "}" for j in range(last, -1, -1)]
  if codes[0] == DENSE_CODE:
    extent = "(lo) = 0; (hi) = SRC_SIZE[0];"
  else:
    extent = ("(lo) = clamp64((int64_t)spos0[0], 0, SRC_CAP[0]); "
              "(hi) = clamp64((int64_t)spos0[1], (lo), SRC_CAP[0]);")
  if runs:
    return ("#define FOR_EACH_RUN_IN(CLO, CHI, ...) { \\\n" +
            " \\\n".join(lines) + " }\n")
  return ("#define DECLARE_SOURCE(a, b) " + " ".join(decl) + "\n"
          "#define OUTER_EXTENT(lo, hi) " + extent + "\n"
          "#define FOR_EACH_ENTRY_IN(CLO, CHI, ...) { \\\n" +
          " \\\n".join(lines) + " }\n")


def _body_source(plan: StructurePlan) -> str:
  runs = _runs(plan)
  return (_header(plan) + RUNTIME + _constants(plan) + _walk(plan) +
          (_walk(plan, runs=True) if runs else "") + f"#define PASS_RUNS {int(runs)}\n" +
          "#define FOR_EACH_ENTRY(...) FOR_EACH_ENTRY_IN(0, INT64_MAX, __VA_ARGS__)\n" + _BODY)


def generate(plan: StructurePlan) -> str:
  """The C source of ``plan``'s kernel (one exported FFI handler)."""
  return _body_source(plan).replace("KERNEL_NAME", kernel_name(plan))


def ensure_registered(plan: StructurePlan) -> str:
  """Builds (or loads from cache) and registers ``plan``'s kernel; returns its target name."""
  name = kernel_name(plan)
  if not kernel_build.is_registered(name):
    lib = kernel_build.build(generate(plan))
    kernel_build.register(name, lib, name)
  return name


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
