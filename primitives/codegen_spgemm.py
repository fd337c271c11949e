"""C code generation for sparse x sparse products with a new sparse result (Gustavson).

Applies to ``ij,jk->ik`` where A and B are stored row-major with a dense outer level
and a compressed inner one (CSR-like, any index names) and the result is CSR with a
static capacity ``nse``. The kernel

1. counts each result row's entries (parallel over rows, a bitmap marks columns);
2. turns the counts into ``pos`` (a prefix sum) and clamps at the capacity;
3. computes each row into a dense workspace and emits its columns in order by
   scanning the bitmap words between the row's smallest and largest column
   (parallel over rows; each chunk owns its workspace).

No intermediate ever needs ``nse(A) * nse(B)`` — or even ``flops`` — memory: peak
memory is the result plus one dense row per chunk. When the result needs more
than ``nse`` entries the values are poisoned with NaN (never silently truncated).
The same counting pass is exposed as a plain C function for eager size queries.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from .c_runtime import RUNTIME
from .codegen import _C_TYPES, _I_TYPES


@dataclasses.dataclass(frozen=True)
class SpgemmPlan:
  """A CSR x CSR -> CSR product: sizes ``(m, k) x (k, n)``, capacities, dtypes."""
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
    return "jscorch_spgemm_" + hashlib.sha256(repr(self).encode()).hexdigest()[:16]


def _row_walk(count_only: bool) -> str:
  """C statements that walk row i of A x B, marking columns (and accumulating)."""
  acc = "" if count_only else "w[c] = v;"
  add = "" if count_only else "else w[c] += v;"
  value = "" if count_only else "const T v = av * a->b_data[q];"
  av = "" if count_only else "const T av = a->a_data[p];"
  return f"""
    int64_t lo_c = N, hi_c = -1, cnt = 0;
    int64_t pa_hi = a->a_pos[i + 1]; if (pa_hi > NSE_A) pa_hi = NSE_A;
    for (int64_t p = a->a_pos[i]; p < pa_hi; ++p) {{
      const int64_t j = a->a_crd[p];
      if ((uint64_t)j >= K) continue;
      {av}
      int64_t pb_hi = a->b_pos[j + 1]; if (pb_hi > NSE_B) pb_hi = NSE_B;
      for (int64_t q = a->b_pos[j]; q < pb_hi; ++q) {{
        const int64_t c = a->b_crd[q];
        if ((uint64_t)c >= N) continue;
        {value}
        const uint64_t bit = 1ull << (c & 63);
        if (!(bm[c >> 6] & bit)) {{
          bm[c >> 6] |= bit; {acc} ++cnt;
          if (c < lo_c) lo_c = c;
          if (c > hi_c) hi_c = c;
        }} {add}
      }}
    }}"""


def generate(plan: SpgemmPlan) -> str:
  """The C source of the SpGEMM kernel (FFI handler ``plan.name``) and its counter."""
  T, I = _C_TYPES[np.dtype(plan.dtype)], _I_TYPES[np.dtype(plan.index_dtype)]
  words = (plan.n + 63) // 64
  return f"""/* jscorch generated kernel {plan.name}
 *   einsum : ij,jk->ik, CSR ({plan.m}x{plan.k}, nse {plan.nse_a}) x CSR ({plan.k}x{plan.n},
 *            nse {plan.nse_b}) -> CSR capacity {plan.nse_out}; Gustavson, bitmap workspace */
{RUNTIME}
typedef {T} T;
typedef {I} I;
enum {{ M = {plan.m}, K = {plan.k}, N = {plan.n}, WORDS = {words} }};
#define NSE_A {plan.nse_a}LL
#define NSE_B {plan.nse_b}LL
#define NSE {plan.nse_out}LL

typedef struct {{
  const T* a_data; const I* a_pos; const I* a_crd;
  const T* b_data; const I* b_pos; const I* b_crd;
  T* data; I* pos; I* crd;
}} args_t;

static int64_t work_before(const void* a_, int64_t u) {{
  const args_t* a = (const args_t*)a_;
  int64_t p = a->a_pos[u < M ? u : M];
  return (p > NSE_A ? NSE_A : p) + u;
}}

/* Phase 1: entries of each result row, stored in pos[i + 1]. */
static void count_rows(const void* a_, int64_t lo, int64_t hi) {{
  const args_t* a = (const args_t*)a_;
  uint64_t* bm = (uint64_t*)calloc(WORDS, sizeof(uint64_t));
  for (int64_t i = lo; i < hi; ++i) {{{_row_walk(True)}
    a->pos[i + 1] = (I)cnt;
    if (hi_c >= 0) memset(bm + (lo_c >> 6), 0, sizeof(uint64_t) * ((hi_c >> 6) - (lo_c >> 6) + 1));
  }}
  free(bm);
}}

/* Phase 3: values of each row, columns in order, written at pos[i]. */
static void fill_rows(const void* a_, int64_t lo, int64_t hi) {{
  const args_t* a = (const args_t*)a_;
  uint64_t* bm = (uint64_t*)calloc(WORDS, sizeof(uint64_t));
  T* w = (T*)malloc(sizeof(T) * (N > 0 ? N : 1));
  for (int64_t i = lo; i < hi; ++i) {{{_row_walk(False)}
    int64_t o = a->pos[i];
    const int64_t end = a->pos[i + 1];
    if (hi_c < 0) continue;
    for (int64_t wd = lo_c >> 6; wd <= (hi_c >> 6); ++wd) {{
      uint64_t word = bm[wd];
      bm[wd] = 0;
      while (word) {{
        const int64_t c = wd * 64 + __builtin_ctzll(word);
        word &= word - 1;
        if (o < end) {{ a->crd[o] = (I)c; a->data[o] = w[c]; ++o; }}
      }}
    }}
  }}
  free(w);
  free(bm);
}}

static void run(XLA_FFI_CallFrame* cf, args_t* a) {{
  int64_t bounds[257];
  int64_t n_chunks = 4 * jscorch_num_threads(cf);
  if (n_chunks > 256) n_chunks = 256;
  n_chunks = M > 0 ? jscorch_split(M, work_before, a, n_chunks, bounds) : 0;
  a->pos[0] = 0;
  jscorch_parallel_for(cf, count_rows, a, bounds, n_chunks);
  int64_t total = 0;
  for (int64_t i = 0; i < M; ++i) {{
    total += a->pos[i + 1];
    a->pos[i + 1] = (I)(total < NSE ? total : NSE);
  }}
  jscorch_parallel_for(cf, fill_rows, a, bounds, n_chunks);
  const int64_t used = total < NSE ? total : NSE;
  for (int64_t o = used; o < NSE; ++o) {{ a->crd[o] = (I)N; a->data[o] = 0; }}
  if (total > NSE) for (int64_t o = 0; o < NSE; ++o) a->data[o] = (T)NAN;
}}

XLA_FFI_Error* {plan.name}(XLA_FFI_CallFrame* cf) {{
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  args_t a;
  a.a_data = (const T*)jscorch_arg(cf, 0);
  a.a_pos = (const I*)jscorch_arg(cf, 1);
  a.a_crd = (const I*)jscorch_arg(cf, 2);
  a.b_data = (const T*)jscorch_arg(cf, 3);
  a.b_pos = (const I*)jscorch_arg(cf, 4);
  a.b_crd = (const I*)jscorch_arg(cf, 5);
  a.data = (T*)jscorch_ret(cf, 0);
  a.pos = (I*)jscorch_ret(cf, 1);
  a.crd = (I*)jscorch_ret(cf, 2);
  run(cf, &a);
  return NULL;
}}

/* Eager size query: entries of A x B (host buffers; serial). */
int64_t {plan.name}_count(const I* a_pos, const I* a_crd, const I* b_pos, const I* b_crd) {{
  args_t a;
  memset(&a, 0, sizeof(a));
  a.a_pos = a_pos; a.a_crd = a_crd; a.b_pos = b_pos; a.b_crd = b_crd;
  I* counts = (I*)calloc(M + 1, sizeof(I));
  a.pos = counts;
  if (M > 0) count_rows(&a, 0, M);
  int64_t total = 0;
  for (int64_t i = 0; i < M; ++i) total += counts[i + 1];
  free(counts);
  return total;
}}
"""
