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

It computes integer structure only: ``dest[i]``, the output slot of entry ``i``
(``nse`` for padding or overflow), lets XLA move the values. Batch elements run in
parallel on XLA's thread pool.
"""
from __future__ import annotations

import collections
import hashlib

import jax
import numpy as np

from .. import kernel_build
from ..c_runtime import RUNTIME
from ..settings import settings
from .plan import COMPRESSED_CODE, DENSE_CODE, StructurePlan, level_codes, np_dtype_name

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
      f"#define NSE {dst.nse}LL",
      f"#define SUMS {int(plan.sums)}",
      f"#define N_SORT {len(plan.sort_levels)}",
      f"static const int SORT_LEVEL[] = {_ints(plan.sort_levels)};",
      f"static const int DST_KIND[L] = {_ints(level_codes(dst))};",
      f"static const int DST_UNIQUE[L] = {_ints(l.unique for l in dst.format.levels)};",
      f"static const int64_t DST_SIZE[L] = {_ints(dst.level_sizes)};",
      f"static const int64_t DST_CAP[L] = {_ints(dst.capacities)};",
      f"static const int64_t DST_PCAP[L] = {_ints(dst.parent_capacity(k) for k in range(plan.n_levels))};",
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
  void* out[2 * L + 2];           /* destination buffers, dest, count */
} structure_args;

/* Stable sort of ord[0..m) by key[ord[i]] in [0, size): one counting pass when the
   histogram is small, else 16-bit radix digits (least significant first). */
static void sort_by(const didx_t* key, int64_t size, int64_t m, int64_t** ord, int64_t** tmp,
                    int64_t* hist, int64_t hist_cap) {
  int radix = size > hist_cap;
  int64_t buckets = radix ? ((int64_t)1 << 16) : size, mask = buckets - 1, bits = 0;
  while (radix && ((int64_t)1 << bits) < size) ++bits;
  for (int64_t shift = 0; shift == 0 || shift < bits; shift += 16) {
    int64_t* o = *ord;
    int64_t* t = *tmp;
    memset(hist, 0, sizeof(int64_t) * (buckets + 1));
    if (radix) {
      for (int64_t i = 0; i < m; ++i) hist[(((int64_t)key[o[i]] >> shift) & mask) + 1]++;
      for (int64_t v = 0; v < buckets; ++v) hist[v + 1] += hist[v];
      for (int64_t i = 0; i < m; ++i) { int64_t e = o[i]; t[hist[((int64_t)key[e] >> shift) & mask]++] = e; }
    } else {
      for (int64_t i = 0; i < m; ++i) hist[(int64_t)key[o[i]] + 1]++;
      for (int64_t v = 0; v < buckets; ++v) hist[v + 1] += hist[v];
      for (int64_t i = 0; i < m; ++i) { int64_t e = o[i]; t[hist[key[e]]++] = e; }
    }
    *ord = t;
    *tmp = o;
  }
}

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

/* One batch element. Returns 0, or -1 when out of memory. */
static int structure_one(const structure_args* a, int64_t b) {
  const int64_t n = N_IN;
  didx_t* col[L];
  unsigned char* valid = (unsigned char*)malloc(n ? n : 1);
  int64_t* ord = (int64_t*)malloc(sizeof(int64_t) * (n ? n : 1));
  int64_t* tmp = (int64_t*)malloc(sizeof(int64_t) * (n ? n : 1));
  int ok = valid && ord && tmp;
  for (int k = 0; k < L; ++k) {
    col[k] = (didx_t*)malloc(sizeof(didx_t) * (n ? n : 1));
    ok = ok && col[k];
  }
  int64_t hist_cap = 2 * n > ((int64_t)1 << 16) ? 2 * n : ((int64_t)1 << 16);
  int64_t hist_len = 0;
  for (int s = 0; s < N_SORT; ++s) {
    int64_t size = DST_SIZE[SORT_LEVEL[s]];
    int64_t need = size > hist_cap ? ((int64_t)1 << 16) : size;
    if (need > hist_len) hist_len = need;
  }
  int64_t* hist = (int64_t*)malloc(sizeof(int64_t) * (hist_len + 1));
  ok = ok && hist;
  if (!ok) {
    free(valid); free(ord); free(tmp); free(hist);
    for (int k = 0; k < L; ++k) free(col[k]);
    return -1;
  }

  /* 1. coordinates in destination storage order; valid[i] = all in range */
  memset(valid, 1, n);
#if FROM_LEVELS
  {
    /* the parent position of every position of each compressed source level */
    int64_t* parent[L];
    int failed = 0;
    int in_buf = 0;
    const sidx_t* pos[L];
    const sidx_t* crd[L];
    for (int j = 0; j < L; ++j) {
      parent[j] = NULL; pos[j] = NULL; crd[j] = NULL;
      if (SRC_KIND[j] == 1) pos[j] = (const sidx_t*)a->in[in_buf++] + b * (SRC_PCAP[j] + 1);
      if (SRC_KIND[j] != 0) crd[j] = (const sidx_t*)a->in[in_buf++] + b * SRC_CAP[j];
      if (SRC_KIND[j] == 1) {
        int64_t cap = SRC_CAP[j];
        parent[j] = (int64_t*)malloc(sizeof(int64_t) * (cap ? cap : 1));
        if (!parent[j]) { failed = 1; continue; }
        int64_t q = 0;
        for (int64_t p = 0; p < SRC_PCAP[j]; ++p) {
          int64_t hi = clamp64((int64_t)pos[j][p + 1], 0, cap);
          for (; q < hi; ++q) parent[j][q] = p;
        }
        for (; q < cap; ++q) parent[j][q] = -1;     /* past pos[-1]: padding */
      }
    }
    if (!failed) {
      for (int64_t i = 0; i < n; ++i) {
        int64_t q = i;
        unsigned char ok_i = 1;
        for (int j = L - 1; j >= 0; --j) {
          int64_t c;
          if (q < 0 || q >= SRC_CAP[j]) { ok_i = 0; break; }
          if (SRC_KIND[j] == 0) {
            c = SRC_SIZE[j] ? q % SRC_SIZE[j] : 0;
            q = SRC_SIZE[j] ? q / SRC_SIZE[j] : -1;
          } else {
            c = (int64_t)crd[j][q];
            q = SRC_KIND[j] == 1 ? parent[j][q] : q;
          }
          if (c < 0 || c >= SRC_SIZE[j]) { ok_i = 0; break; }
          col[SRC_TO_DST[j]][i] = (didx_t)c;
        }
        if (ok_i && q != 0) ok_i = 0;          /* the root has the single position 0 */
        valid[i] = ok_i;
      }
    }
    for (int j = 0; j < L; ++j) free(parent[j]);
    if (failed) {
      free(valid); free(ord); free(tmp); free(hist);
      for (int k = 0; k < L; ++k) free(col[k]);
      return -1;
    }
  }
#else
  {
    const didx_t* coords = (const didx_t*)a->in[0] + b * n * L;
    for (int64_t i = 0; i < n; ++i) {
      unsigned char ok_i = 1;
      for (int k = 0; k < L; ++k) {
        int64_t c = (int64_t)coords[i * L + k];
        if (c < 0 || c >= DST_SIZE[k]) ok_i = 0;
        col[k][i] = (didx_t)c;
      }
      valid[i] = ok_i;
    }
  }
#endif

  /* 2. the valid entries, stably sorted (padding entries get no slot) */
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) if (valid[i]) ord[m++] = i;
  for (int s = 0; s < N_SORT; ++s)
    sort_by(col[SORT_LEVEL[s]], DST_SIZE[SORT_LEVEL[s]], m, &ord, &tmp, hist, hist_cap);

  /* 3. append the sorted entries level by level */
  didx_t* pos_out[L];
  didx_t* crd_out[L];
  {
    int ob = 0;
    for (int k = 0; k < L; ++k) {
      pos_out[k] = NULL; crd_out[k] = NULL;
      if (DST_KIND[k] == 1) {
        pos_out[k] = (didx_t*)a->out[ob++] + b * (DST_PCAP[k] + 1);
        memset(pos_out[k], 0, sizeof(didx_t) * (DST_PCAP[k] + 1));
      }
      if (DST_KIND[k] != 0) {
        crd_out[k] = (didx_t*)a->out[ob++] + b * DST_CAP[k];
        for (int64_t q = 0; q < DST_CAP[k]; ++q) crd_out[k][q] = (didx_t)DST_SIZE[k];
      }
    }
  }
  int n_buf = 0;
  for (int k = 0; k < L; ++k) n_buf += (DST_KIND[k] == 1) + (DST_KIND[k] != 0);
  didx_t* dest = (didx_t*)a->out[n_buf] + b * n;
  didx_t* count_out = (didx_t*)a->out[n_buf + 1] + b;
  for (int64_t i = 0; i < n; ++i) dest[i] = (didx_t)NSE;

  int64_t cnt[L], last_c[L], last_parent[L], last_child[L];
  for (int k = 0; k < L; ++k) { cnt[k] = 0; last_c[k] = -1; last_parent[k] = -1; last_child[k] = -1; }
  int64_t rows = 0, count = -1, prev = -1, prev_slot = NSE;
  for (int64_t i = 0; i < m; ++i) {
    int64_t e = ord[i];
    if (SUMS && prev >= 0) {
      int same = 1;
      for (int k = 0; k < L; ++k) same &= col[k][e] == col[k][prev];
      if (same) { dest[e] = (didx_t)prev_slot; continue; }
    }
    prev = e;
    ++rows;
    int64_t node = 0;
    for (int k = 0; k < L; ++k) {
      int64_t c = (int64_t)col[k][e];
      if (DST_KIND[k] == 0) {
        node = node * DST_SIZE[k] + c;
      } else if (DST_KIND[k] == 1) {
        int fresh = !DST_UNIQUE[k] || cnt[k] == 0 || c != last_c[k] || node != last_parent[k];
        if (fresh) {
          int64_t child = cnt[k]++;
          if (child < DST_CAP[k]) crd_out[k][child] = (didx_t)c;
          if (node < DST_PCAP[k]) pos_out[k][node + 1]++;
          last_c[k] = c; last_parent[k] = node; last_child[k] = child;
        }
        node = last_child[k];
      } else {
        if (node < DST_CAP[k]) crd_out[k][node] = (didx_t)c;
      }
    }
    prev_slot = node < NSE ? node : NSE;
    dest[e] = (didx_t)prev_slot;
  }
  for (int k = 0; k < L; ++k) {
    if (DST_KIND[k] != 1) continue;
    int64_t run = 0;
    for (int64_t p = 0; p < DST_PCAP[k]; ++p) {
      run += pos_out[k][p + 1];
      pos_out[k][p + 1] = (didx_t)(run < DST_CAP[k] ? run : DST_CAP[k]);
    }
    count = cnt[k];
  }
  *count_out = (didx_t)(count < 0 ? rows : count);

  free(valid); free(ord); free(tmp); free(hist);
  for (int k = 0; k < L; ++k) free(col[k]);
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
  if (n_in > 2 * L + 1 || n_out > 2 * L + 2) return jscorch_error(cf, "jscorch_structure: bad arity");
  for (int i = 0; i < n_in; ++i) a.in[i] = jscorch_arg(cf, i);
  for (int i = 0; i < n_out; ++i) a.out[i] = jscorch_ret(cf, i);
  XLA_FFI_Buffer* last = (XLA_FFI_Buffer*)cf->rets.rets[n_out - 1];
  int64_t batch = last->rank ? last->dims[0] : 1;
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


def _body_source(plan: StructurePlan) -> str:
  return _header(plan) + RUNTIME + _constants(plan) + _BODY


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
