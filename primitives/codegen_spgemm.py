"""C code generation for sparse x sparse products with a new sparse result (Gustavson).

Applies to ``ij,jk->ik`` where A and B are stored row-major with a dense outer level
and a compressed inner one (CSR-like, any index names) and the result is CSR with a
static capacity ``nse``. The kernel

1. splits the rows into chunks of about equal *multiply-adds* (the sum over a row's
   entries of the matching B row lengths — power-law rows are balanced by their real
   work, not their length);
2. counts each result row's entries (parallel over chunks; a bitmap marks columns,
   without data-dependent branches);
3. turns the counts into ``pos`` (a prefix sum) and clamps at the capacity;
4. computes each row into a dense workspace (parallel; each chunk owns its bitmap,
   values and column list) and writes it at ``pos[i]`` in column order, choosing per
   row the cheapest of three ways: scan the bitmap words between the row's smallest
   and largest column (dense rows); mark the non-empty words in a summary bitmap and
   visit only those (sparse rows); sort the column list (very wide, very sparse rows).

Output columns are sorted without any full sort of the result, and no pass over a
``flops``-sized intermediate is made.

No intermediate ever needs ``nse(A) * nse(B)`` — or even ``flops`` — memory: peak
memory is the result plus one dense row per chunk. When the result needs more
than ``nse`` entries the values are poisoned with NaN (never silently truncated),
and no row is written past its clamped ``pos``.

Capacities are read from the buffers at run time, so one compiled kernel serves every
``nse`` of a given shape and dtype. The counting pass is also exported as a plain C
function (its own threads) for the eager size query.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from .c_runtime import RUNTIME
from .codegen import _C_TYPES, _I_TYPES


@dataclasses.dataclass(frozen=True)
class SpgemmPlan:
  """A CSR x CSR -> CSR product: sizes ``(m, k) x (k, n)``, capacities, dtypes.

  The capacities are not part of the kernel (it reads them from its buffers), so
  :attr:`name` and the source depend only on the sizes and dtypes.
  """
  m: int
  k: int
  n: int
  nse_a: int
  nse_b: int
  nse_out: int
  dtype: np.dtype
  index_dtype: np.dtype

  @property
  def name(self) -> str:
    key = (self.m, self.k, self.n, np.dtype(self.dtype).name, np.dtype(self.index_dtype).name)
    return "jscorch_spgemm_" + hashlib.sha256(repr(key).encode()).hexdigest()[:16]


def _row_walk(numeric: bool, heavy: bool = False) -> str:
  """C statements that walk row i of A x B without data-dependent branches: mark each
  column in the bitmap, append it to ``cols`` (the append only advances for a new
  column), track the column range, and when ``numeric`` accumulate into ``w`` (kept
  all-zero between rows). A ``heavy`` row only marks (and accumulates): its bitmap is
  read whole afterwards."""
  track = "" if heavy else """cols[cnt] = (I)c;
        cnt += !(word & bit);
        lo_c = c < lo_c ? c : lo_c;
        hi_c = c > hi_c ? c : hi_c;"""
  av = "const T av = a->a_data[p];" if numeric else ""
  acc = "w[c] += av * a->b_data[q];" if numeric else ""
  pf = "__builtin_prefetch(a->b_data + a->b_pos[j1]);" if numeric else ""
  return f"""
    {"" if heavy else "int64_t lo_c = N, hi_c = -1, cnt = 0;"}
    int64_t pa_hi = a->a_pos[i + 1]; if (pa_hi > a->nse_a) pa_hi = a->nse_a;
    for (int64_t p = a->a_pos[i]; p < pa_hi; ++p) {{
      const int64_t j = a->a_crd[p];
      if (p + 2 * AHEAD < a->nse_a) {{     /* B rows are visited at random: prefetch */
        const int64_t j2 = a->a_crd[p + 2 * AHEAD];
        if ((uint64_t)j2 < K) __builtin_prefetch(a->b_pos + j2);
        const int64_t j1 = a->a_crd[p + AHEAD];
        if ((uint64_t)j1 < K) {{
          __builtin_prefetch(a->b_crd + a->b_pos[j1]);
          {pf}
        }}
      }}
      if ((uint64_t)j >= K) continue;
      {av}
      int64_t pb_hi = a->b_pos[j + 1]; if (pb_hi > a->nse_b) pb_hi = a->nse_b;
      for (int64_t q = a->b_pos[j]; q < pb_hi; ++q) {{
        const int64_t c = a->b_crd[q];
        if ((uint64_t)c >= N) continue;
        const uint64_t word = bm[c >> 6], bit = 1ull << (c & 63);
        bm[c >> 6] = word | bit;
        {track}
        {acc}
      }}
    }}"""


def generate(plan: SpgemmPlan) -> str:
  """The C source of the SpGEMM kernel (FFI handler ``plan.name``) and its counter."""
  T, I = _C_TYPES[np.dtype(plan.dtype)], _I_TYPES[np.dtype(plan.index_dtype)]
  words = (plan.n + 63) // 64
  return f"""/* jscorch generated kernel {plan.name}
 *   einsum : ij,jk->ik, CSR ({plan.m}x{plan.k}) x CSR ({plan.k}x{plan.n}) -> CSR;
 *            Gustavson, bitmap workspace, capacities read from the buffers */
{RUNTIME}
#include <pthread.h>
typedef {T} T;
typedef {I} I;
enum {{ M = {plan.m}, K = {plan.k}, N = {plan.n}, WORDS = {words},
       SUMMARY_WORDS = {(words + 63) // 64}, AHEAD = 4,
       SERIAL_WORK = 1 << 15 }};

typedef struct {{
  const T* a_data; const I* a_pos; const I* a_crd;
  const T* b_data; const I* b_pos; const I* b_crd;
  T* data; I* pos; I* crd;
  int64_t nse_a, nse_b, nse;
  int64_t* work;           /* work[u]: multiply-adds + entries + rows before row u */
}} args_t;

static int64_t work_before(const void* a_, int64_t u) {{
  return ((const args_t*)a_)->work[u];
}}

/* The prefix of per-row work (M + 1 values, malloc'd), NULL when out of memory. */
static int64_t* row_work(const args_t* a) {{
  int64_t* work = (int64_t*)malloc(sizeof(int64_t) * (M + 1));
  if (!work) return NULL;
  int64_t total = 0;
  work[0] = 0;
  for (int64_t i = 0; i < M; ++i) {{
    int64_t pa_hi = a->a_pos[i + 1]; if (pa_hi > a->nse_a) pa_hi = a->nse_a;
    int64_t pa_lo = a->a_pos[i];
    total += 1 + (pa_hi > pa_lo ? pa_hi - pa_lo : 0);
    for (int64_t p = pa_lo; p < pa_hi; ++p) {{
      const int64_t j = a->a_crd[p];
      if ((uint64_t)j >= K) continue;
      int64_t pb_hi = a->b_pos[j + 1]; if (pb_hi > a->nse_b) pb_hi = a->nse_b;
      if (pb_hi > a->b_pos[j]) total += pb_hi - a->b_pos[j];
    }}
    work[i + 1] = total;
  }}
  return work;
}}

/* Chunk boundaries balanced by row work: one chunk (serial) for small products, where
   waking other threads costs more than it saves, or when out of memory. */
static int64_t split_rows(args_t* a, int64_t n_threads, int64_t* bounds) {{
  int64_t n_chunks = 8 * n_threads;
  if (n_chunks > 256) n_chunks = 256;
  if (M == 0) return 0;
  a->work = row_work(a);
  if (!a->work || a->work[M] < SERIAL_WORK) {{ bounds[0] = 0; bounds[1] = M; return 1; }}
  return jscorch_split(M, work_before, a, n_chunks, bounds);
}}

/* Sorts x[0..n) ascending (distinct values): quicksort, insertion sort when short. */
static void sort_cols(I* x, int64_t n) {{
  while (n > 24) {{
    const I f = x[0], m = x[n / 2], l = x[n - 1];
    const I piv = f < m ? (m < l ? m : (f < l ? l : f)) : (f < l ? f : (m < l ? l : m));
    int64_t i = -1, j = n;
    for (;;) {{
      do ++i; while (x[i] < piv);
      do --j; while (x[j] > piv);
      if (i >= j) break;
      const I t = x[i]; x[i] = x[j]; x[j] = t;
    }}
    const int64_t left = j + 1;     /* x[0..left) <= piv <= x[left..n) */
    if (left < n - left) {{ sort_cols(x, left); x += left; n -= left; }}
    else {{ sort_cols(x + left, n - left); n = left; }}
  }}
  for (int64_t i = 1; i < n; ++i) {{
    const I v = x[i];
    int64_t j = i - 1;
    while (j >= 0 && x[j] > v) {{ x[j + 1] = x[j]; --j; }}
    x[j + 1] = v;
  }}
}}

/* How a row's sorted columns are read out: DENSE scans its bitmap words; SUMMARY marks
   the non-empty words in a summary bitmap first (one bit per word) and visits only
   those; SORT sorts its column list (very wide, very sparse rows). */
enum {{ DENSE, SUMMARY, SORT }};

static inline int emission(int64_t lo_c, int64_t hi_c, int64_t cnt) {{
  if ((hi_c >> 6) - (lo_c >> 6) < 2 * cnt) return DENSE;
  const int64_t summary_words = (hi_c >> 12) - (lo_c >> 12) + 1;
  return summary_words <= cnt * (64 - __builtin_clzll((uint64_t)cnt)) ? SUMMARY : SORT;
}}

/* Rows with at least this many products (in work[]) are heavy: marking alone is
   cheaper, and the whole bitmap is read afterwards. */
static inline int heavy_row(const args_t* a, int64_t i) {{
  return a->work && a->work[i + 1] - a->work[i] >= 2 * WORDS + 64;
}}

/* Writes the columns set in bitmap words [wlo, whi] with their values at *o (below
   end), clearing bitmap and values. */
static inline void emit_words(const args_t* a, uint64_t* bm, T* w, int64_t wlo, int64_t whi,
                              int64_t* o, int64_t end) {{
  for (int64_t wd = wlo; wd <= whi; ++wd) {{
    uint64_t word = bm[wd];
    bm[wd] = 0;
    while (word) {{
      const int64_t c = wd * 64 + __builtin_ctzll(word);
      word &= word - 1;
      const T v = w[c];
      w[c] = 0;
      if (*o < end) {{ a->crd[*o] = (I)c; a->data[*o] = v; ++*o; }}
    }}
  }}
}}

/* Per-chunk workspace: bitmap, column list and (numeric pass) the summary of the
   bitmap and the values, all zero between rows. */
typedef struct {{ uint64_t* bm; uint64_t* sm; I* cols; T* w; }} workspace_t;

static workspace_t workspace(int numeric) {{
  workspace_t ws;
  ws.bm = (uint64_t*)calloc(WORDS + 1, sizeof(uint64_t));
  ws.sm = numeric ? (uint64_t*)calloc(SUMMARY_WORDS + 1, sizeof(uint64_t)) : NULL;
  ws.cols = (I*)malloc(sizeof(I) * (N + 1));
  ws.w = numeric ? (T*)calloc(N + 1, sizeof(T)) : NULL;
  if (!ws.bm || !ws.cols || (numeric && (!ws.sm || !ws.w))) abort();
  return ws;
}}

static void release(workspace_t ws) {{
  free(ws.bm); free(ws.sm); free(ws.cols); free(ws.w);
}}

/* Phase 1: entries of each result row, stored in pos[i + 1]. */
static void count_rows(const void* a_, int64_t lo, int64_t hi) {{
  const args_t* a = (const args_t*)a_;
  workspace_t ws = workspace(0);
  uint64_t* bm = ws.bm; I* cols = ws.cols;
  for (int64_t i = lo; i < hi; ++i) {{
    if (heavy_row(a, i)) {{{_row_walk(False, heavy=True)}
      int64_t cnt = 0;
      for (int64_t wd = 0; wd < WORDS; ++wd) {{ cnt += __builtin_popcountll(bm[wd]); bm[wd] = 0; }}
      a->pos[i + 1] = (I)cnt;
      continue;
    }}{_row_walk(False)}
    a->pos[i + 1] = (I)cnt;
    if (hi_c < 0) continue;
    if ((hi_c >> 6) - (lo_c >> 6) < 2 * cnt)
      memset(bm + (lo_c >> 6), 0, sizeof(uint64_t) * ((hi_c >> 6) - (lo_c >> 6) + 1));
    else
      for (int64_t t = 0; t < cnt; ++t) bm[cols[t] >> 6] = 0;
  }}
  release(ws);
}}

/* Phase 2: values of each row, columns in order, written at pos[i] .. pos[i + 1]. */
static void fill_rows(const void* a_, int64_t lo, int64_t hi) {{
  const args_t* a = (const args_t*)a_;
  workspace_t ws = workspace(1);
  uint64_t* bm = ws.bm; uint64_t* sm = ws.sm; I* cols = ws.cols; T* w = ws.w;
  for (int64_t i = lo; i < hi; ++i) {{
    int64_t o = a->pos[i];
    const int64_t end = a->pos[i + 1];
    if (heavy_row(a, i)) {{{_row_walk(True, heavy=True)}
      emit_words(a, bm, w, 0, WORDS - 1, &o, end);
      continue;
    }}{_row_walk(True)}
    if (hi_c < 0) continue;
    const int how = emission(lo_c, hi_c, cnt);
    if (how == DENSE) {{
      emit_words(a, bm, w, lo_c >> 6, hi_c >> 6, &o, end);
    }} else if (how == SUMMARY) {{
      for (int64_t t = 0; t < cnt; ++t) sm[cols[t] >> 12] |= 1ull << ((cols[t] >> 6) & 63);
      for (int64_t sw = lo_c >> 12; sw <= (hi_c >> 12); ++sw) {{
        uint64_t s = sm[sw];
        sm[sw] = 0;
        while (s) {{
          const int64_t wd = sw * 64 + __builtin_ctzll(s);
          s &= s - 1;
          uint64_t word = bm[wd];
          bm[wd] = 0;
          while (word) {{
            const int64_t c = wd * 64 + __builtin_ctzll(word);
            word &= word - 1;
            const T v = w[c];
            w[c] = 0;
            if (o < end) {{ a->crd[o] = (I)c; a->data[o] = v; ++o; }}
          }}
        }}
      }}
    }} else {{
      sort_cols(cols, cnt);
      for (int64_t t = 0; t < cnt; ++t) {{
        const I c = cols[t];
        const T v = w[c];
        bm[c >> 6] = 0; w[c] = 0;
        if (o < end) {{ a->crd[o] = c; a->data[o] = v; ++o; }}
      }}
    }}
  }}
  release(ws);
}}

static void run(XLA_FFI_CallFrame* cf, args_t* a) {{
  int64_t bounds[257];
  const int64_t n_chunks = split_rows(a, jscorch_num_threads(cf), bounds);
  a->pos[0] = 0;
  jscorch_parallel_for(cf, count_rows, a, bounds, n_chunks);
  int64_t total = 0;
  for (int64_t i = 0; i < M; ++i) {{
    total += a->pos[i + 1];
    a->pos[i + 1] = (I)(total < a->nse ? total : a->nse);
  }}
  jscorch_parallel_for(cf, fill_rows, a, bounds, n_chunks);
  free(a->work);
  const int64_t used = total < a->nse ? total : a->nse;
  for (int64_t o = used; o < a->nse; ++o) {{ a->crd[o] = (I)N; a->data[o] = 0; }}
  if (total > a->nse) for (int64_t o = 0; o < a->nse; ++o) a->data[o] = (T)NAN;
}}

static int64_t jscorch_dim0(void* buffer) {{
  return ((XLA_FFI_Buffer*)buffer)->dims[0];
}}

XLA_FFI_Error* {plan.name}(XLA_FFI_CallFrame* cf) {{
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  args_t a;
  memset(&a, 0, sizeof(a));
  a.a_data = (const T*)jscorch_arg(cf, 0);
  a.a_pos = (const I*)jscorch_arg(cf, 1);
  a.a_crd = (const I*)jscorch_arg(cf, 2);
  a.b_data = (const T*)jscorch_arg(cf, 3);
  a.b_pos = (const I*)jscorch_arg(cf, 4);
  a.b_crd = (const I*)jscorch_arg(cf, 5);
  a.data = (T*)jscorch_ret(cf, 0);
  a.pos = (I*)jscorch_ret(cf, 1);
  a.crd = (I*)jscorch_ret(cf, 2);
  a.nse_a = jscorch_dim0(cf->args.args[2]);
  a.nse_b = jscorch_dim0(cf->args.args[5]);
  a.nse = jscorch_dim0(cf->rets.rets[2]);
  run(cf, &a);
  return NULL;
}}

typedef struct {{
  const args_t* args;
  const int64_t* bounds;
  int64_t n_chunks;
  _Atomic int64_t next;
}} count_job_t;

static void* count_worker(void* job_) {{
  count_job_t* job = (count_job_t*)job_;
  for (;;) {{
    const int64_t c = atomic_fetch_add(&job->next, 1);
    if (c >= job->n_chunks) return NULL;
    count_rows(job->args, job->bounds[c], job->bounds[c + 1]);
  }}
}}

/* Eager size query on host buffers: entries of A x B, counted on n_threads threads. */
int64_t {plan.name}_count(const I* a_pos, const I* a_crd, int64_t nse_a, const I* b_pos,
                          const I* b_crd, int64_t nse_b, int64_t n_threads) {{
  args_t a;
  memset(&a, 0, sizeof(a));
  a.a_pos = a_pos; a.a_crd = a_crd; a.b_pos = b_pos; a.b_crd = b_crd;
  a.nse_a = nse_a; a.nse_b = nse_b;
  I* counts = (I*)calloc(M + 1, sizeof(I));
  if (!counts) abort();
  a.pos = counts;
  if (n_threads < 1) n_threads = 1;
  if (n_threads > 64) n_threads = 64;
  int64_t bounds[257];
  count_job_t job = {{&a, bounds, split_rows(&a, n_threads, bounds), 0}};
  pthread_t threads[64];
  int64_t started = 0;
  for (; started < n_threads - 1 && started < job.n_chunks - 1; ++started)
    if (pthread_create(&threads[started], NULL, count_worker, &job)) break;
  count_worker(&job);
  for (int64_t t = 0; t < started; ++t) pthread_join(threads[t], NULL);
  free(a.work);
  int64_t total = 0;
  for (int64_t i = 0; i < M; ++i) total += counts[i + 1];
  free(counts);
  return total;
}}
"""
