/* jscorch SpGEMM: C = A x B for CSR A (m x k), CSR B (k x n) into CSR C (Gustavson).
 *
 * Compiled once per value type T and index type I (the Python side prepends the C
 * runtime, the two typedefs and the names SPGEMM_NAME / SPGEMM_COUNT_NAME); every size
 * is read at run time: m, k and the capacities from the FFI buffers' dims, n from the
 * int64 attribute "n". One binary serves every shape. With the attribute "swap" = 1 the
 * operands come as (B, A): a CSC x CSC -> CSC product is C^T = B^T A^T in CSR terms.
 * Buffers with leading (batch) dims hold one product per element, computed in turn.
 *
 * 1. rows are split into chunks of about equal multiply-adds (the sum over a row's
 *    entries of the matching B row lengths: power-law rows are balanced by real work);
 * 2. each result row's entries are counted (parallel over chunks; a bitmap marks
 *    columns, without data-dependent branches);
 * 3. the counts become pos (a prefix sum), clamped at the capacity;
 * 4. each row is computed into a dense workspace (parallel; each chunk owns its bitmap,
 *    values and column list) and written at pos[i] in column order, choosing per row
 *    the cheapest of three ways: scan the bitmap words between the row's smallest and
 *    largest column (dense rows); mark the non-empty words in a summary bitmap and visit
 *    only those (sparse rows); sort the column list (very wide, very sparse rows).
 *
 * Peak memory is the result plus one dense row per chunk. A result that needs more
 * than nse entries is poisoned with NaN, and no row is written past its clamped pos.
 * Coordinates out of range (padding) are skipped; every read is bounded by the
 * buffers' capacities. The counting pass is also exported (SPGEMM_COUNT_NAME, its own
 * threads) for the eager size query.
 */
#include <pthread.h>

enum { AHEAD = 4, SERIAL_WORK = 1 << 15 };

typedef struct {
  const T* a_data; const I* a_pos; const I* a_crd;
  const T* b_data; const I* b_pos; const I* b_crd;
  T* data; I* pos; I* crd;
  int64_t nse_a, nse_b, nse;
  int64_t m, k, n, words, summary_words;   /* sizes, read at run time */
  int64_t* work;           /* work[u]: multiply-adds + entries + rows before row u */
} args_t;

static void set_sizes(args_t* a, int64_t m, int64_t k, int64_t n) {
  a->m = m; a->k = k; a->n = n;
  a->words = (n + 63) / 64;
  a->summary_words = (a->words + 63) / 64;
}

static int64_t work_before(const void* a_, int64_t u) {
  return ((const args_t*)a_)->work[u];
}

/* The prefix of per-row work (m + 1 values, malloc'd), NULL when out of memory. */
static int64_t* row_work(const args_t* a) {
  const int64_t M = a->m, K = a->k;
  int64_t* work = (int64_t*)malloc(sizeof(int64_t) * (M + 1));
  if (!work) return NULL;
  int64_t total = 0;
  work[0] = 0;
  for (int64_t i = 0; i < M; ++i) {
    int64_t pa_hi = a->a_pos[i + 1]; if (pa_hi > a->nse_a) pa_hi = a->nse_a;
    int64_t pa_lo = a->a_pos[i];
    total += 1 + (pa_hi > pa_lo ? pa_hi - pa_lo : 0);
    for (int64_t p = pa_lo; p < pa_hi; ++p) {
      const int64_t j = a->a_crd[p];
      if ((uint64_t)j >= (uint64_t)K) continue;
      int64_t pb_hi = a->b_pos[j + 1]; if (pb_hi > a->nse_b) pb_hi = a->nse_b;
      if (pb_hi > a->b_pos[j]) total += pb_hi - a->b_pos[j];
    }
    work[i + 1] = total;
  }
  return work;
}

/* Chunk boundaries balanced by row work: one chunk (serial) for small products, where
   waking other threads costs more than it saves, or when out of memory. */
static int64_t split_rows(args_t* a, int64_t n_threads, int64_t* bounds) {
  int64_t n_chunks = 8 * n_threads;
  if (n_chunks > 256) n_chunks = 256;
  if (a->m == 0) return 0;
  a->work = row_work(a);
  if (!a->work || a->work[a->m] < SERIAL_WORK) { bounds[0] = 0; bounds[1] = a->m; return 1; }
  return jscorch_split(a->m, work_before, a, n_chunks, bounds);
}

/* Sorts x[0..n) ascending (distinct values): quicksort, insertion sort when short. */
static void sort_cols(I* x, int64_t n) {
  while (n > 24) {
    const I f = x[0], m = x[n / 2], l = x[n - 1];
    const I piv = f < m ? (m < l ? m : (f < l ? l : f)) : (f < l ? f : (m < l ? l : m));
    int64_t i = -1, j = n;
    for (;;) {
      do ++i; while (x[i] < piv);
      do --j; while (x[j] > piv);
      if (i >= j) break;
      const I t = x[i]; x[i] = x[j]; x[j] = t;
    }
    const int64_t left = j + 1;     /* x[0..left) <= piv <= x[left..n) */
    if (left < n - left) { sort_cols(x, left); x += left; n -= left; }
    else { sort_cols(x + left, n - left); n = left; }
  }
  for (int64_t i = 1; i < n; ++i) {
    const I v = x[i];
    int64_t j = i - 1;
    while (j >= 0 && x[j] > v) { x[j + 1] = x[j]; --j; }
    x[j + 1] = v;
  }
}

/* Walks row i of A x B without data-dependent branches: marks each column in the
   bitmap, appends it to cols (the append only advances for a new column), tracks the
   column range, and when NUMERIC accumulates into w (kept all-zero between rows). A
   HEAVY row only marks (and accumulates): its bitmap is read whole afterwards. Inlined
   with constant flags, so each use compiles to its own loop. */
typedef struct { int64_t lo_c, hi_c, cnt; } walk_t;

static inline __attribute__((always_inline)) walk_t
row_walk(const args_t* a, int64_t i, uint64_t* bm, I* cols, T* w, const int numeric,
         const int heavy) {
  const int64_t K = a->k, N = a->n, nse_a = a->nse_a, nse_b = a->nse_b;
  const I* a_crd = a->a_crd; const I* b_pos = a->b_pos; const I* b_crd = a->b_crd;
  const T* b_data = a->b_data;
  int64_t lo_c = N, hi_c = -1, cnt = 0;
  int64_t pa_hi = a->a_pos[i + 1]; if (pa_hi > nse_a) pa_hi = nse_a;
  for (int64_t p = a->a_pos[i]; p < pa_hi; ++p) {
    const int64_t j = a_crd[p];
    if (p + 2 * AHEAD < nse_a) {     /* B rows are visited at random: prefetch */
      const int64_t j2 = a_crd[p + 2 * AHEAD];
      if ((uint64_t)j2 < (uint64_t)K) __builtin_prefetch(b_pos + j2);
      const int64_t j1 = a_crd[p + AHEAD];
      if ((uint64_t)j1 < (uint64_t)K) {
        __builtin_prefetch(b_crd + b_pos[j1]);
        if (numeric) __builtin_prefetch(b_data + b_pos[j1]);
      }
    }
    if ((uint64_t)j >= (uint64_t)K) continue;
    const T av = numeric ? a->a_data[p] : (T)0;
    int64_t pb_hi = b_pos[j + 1]; if (pb_hi > nse_b) pb_hi = nse_b;
    for (int64_t q = b_pos[j]; q < pb_hi; ++q) {
      const int64_t c = b_crd[q];
      if ((uint64_t)c >= (uint64_t)N) continue;
      const uint64_t word = bm[c >> 6], bit = 1ull << (c & 63);
      bm[c >> 6] = word | bit;
      if (!heavy) {
        cols[cnt] = (I)c;
        cnt += !(word & bit);
        lo_c = c < lo_c ? c : lo_c;
        hi_c = c > hi_c ? c : hi_c;
      }
      if (numeric) w[c] += av * b_data[q];
    }
  }
  walk_t r = {lo_c, hi_c, cnt};
  return r;
}

/* How a row's sorted columns are read out: DENSE scans its bitmap words; SUMMARY marks
   the non-empty words in a summary bitmap first (one bit per word) and visits only
   those; SORT sorts its column list (very wide, very sparse rows). */
enum { DENSE, SUMMARY, SORT };

static inline int emission(int64_t lo_c, int64_t hi_c, int64_t cnt) {
  if ((hi_c >> 6) - (lo_c >> 6) < 2 * cnt) return DENSE;
  const int64_t summary_words = (hi_c >> 12) - (lo_c >> 12) + 1;
  return summary_words <= cnt * (64 - __builtin_clzll((uint64_t)cnt)) ? SUMMARY : SORT;
}

/* Rows with at least this many products (in work[]) are heavy: marking alone is
   cheaper, and the whole bitmap is read afterwards. */
static inline int heavy_row(const args_t* a, int64_t i) {
  return a->work && a->work[i + 1] - a->work[i] >= 2 * a->words + 64;
}

/* Writes the columns set in bitmap words [wlo, whi] with their values at *o (below
   end), clearing bitmap and values. */
static inline void emit_words(const args_t* a, uint64_t* bm, T* w, int64_t wlo, int64_t whi,
                              int64_t* o, int64_t end) {
  for (int64_t wd = wlo; wd <= whi; ++wd) {
    uint64_t word = bm[wd];
    bm[wd] = 0;
    while (word) {
      const int64_t c = wd * 64 + __builtin_ctzll(word);
      word &= word - 1;
      const T v = w[c];
      w[c] = 0;
      if (*o < end) { a->crd[*o] = (I)c; a->data[*o] = v; ++*o; }
    }
  }
}

/* Per-chunk workspace: bitmap, column list and (numeric pass) the summary of the
   bitmap and the values, all zero between rows. */
typedef struct { uint64_t* bm; uint64_t* sm; I* cols; T* w; } workspace_t;

static workspace_t workspace(const args_t* a, int numeric) {
  workspace_t ws;
  ws.bm = (uint64_t*)calloc(a->words + 1, sizeof(uint64_t));
  ws.sm = numeric ? (uint64_t*)calloc(a->summary_words + 1, sizeof(uint64_t)) : NULL;
  ws.cols = (I*)malloc(sizeof(I) * (a->n + 1));
  ws.w = numeric ? (T*)calloc(a->n + 1, sizeof(T)) : NULL;
  if (!ws.bm || !ws.cols || (numeric && (!ws.sm || !ws.w))) abort();
  return ws;
}

static void release(workspace_t ws) {
  free(ws.bm); free(ws.sm); free(ws.cols); free(ws.w);
}

/* Phase 1: entries of each result row, stored in pos[i + 1]. */
static void count_rows(const void* a_, int64_t lo, int64_t hi) {
  const args_t* a = (const args_t*)a_;
  const int64_t WORDS = a->words;
  workspace_t ws = workspace(a, 0);
  uint64_t* bm = ws.bm; I* cols = ws.cols;
  for (int64_t i = lo; i < hi; ++i) {
    if (heavy_row(a, i)) {
      row_walk(a, i, bm, cols, NULL, 0, 1);
      int64_t cnt = 0;
      for (int64_t wd = 0; wd < WORDS; ++wd) { cnt += __builtin_popcountll(bm[wd]); bm[wd] = 0; }
      a->pos[i + 1] = (I)cnt;
      continue;
    }
    const walk_t r = row_walk(a, i, bm, cols, NULL, 0, 0);
    a->pos[i + 1] = (I)r.cnt;
    if (r.hi_c < 0) continue;
    if ((r.hi_c >> 6) - (r.lo_c >> 6) < 2 * r.cnt)
      memset(bm + (r.lo_c >> 6), 0, sizeof(uint64_t) * ((r.hi_c >> 6) - (r.lo_c >> 6) + 1));
    else
      for (int64_t t = 0; t < r.cnt; ++t) bm[cols[t] >> 6] = 0;
  }
  release(ws);
}

/* Phase 2: values of each row, columns in order, written at pos[i] .. pos[i + 1]. */
static void fill_rows(const void* a_, int64_t lo, int64_t hi) {
  const args_t* a = (const args_t*)a_;
  workspace_t ws = workspace(a, 1);
  uint64_t* bm = ws.bm; uint64_t* sm = ws.sm; I* cols = ws.cols; T* w = ws.w;
  for (int64_t i = lo; i < hi; ++i) {
    int64_t o = a->pos[i];
    const int64_t end = a->pos[i + 1];
    if (heavy_row(a, i)) {
      row_walk(a, i, bm, cols, w, 1, 1);
      emit_words(a, bm, w, 0, a->words - 1, &o, end);
      continue;
    }
    const walk_t r = row_walk(a, i, bm, cols, w, 1, 0);
    const int64_t lo_c = r.lo_c, hi_c = r.hi_c, cnt = r.cnt;
    if (hi_c < 0) continue;
    const int how = emission(lo_c, hi_c, cnt);
    if (how == DENSE) {
      emit_words(a, bm, w, lo_c >> 6, hi_c >> 6, &o, end);
    } else if (how == SUMMARY) {
      for (int64_t t = 0; t < cnt; ++t) sm[cols[t] >> 12] |= 1ull << ((cols[t] >> 6) & 63);
      for (int64_t sw = lo_c >> 12; sw <= (hi_c >> 12); ++sw) {
        uint64_t s = sm[sw];
        sm[sw] = 0;
        while (s) {
          const int64_t wd = sw * 64 + __builtin_ctzll(s);
          s &= s - 1;
          uint64_t word = bm[wd];
          bm[wd] = 0;
          while (word) {
            const int64_t c = wd * 64 + __builtin_ctzll(word);
            word &= word - 1;
            const T v = w[c];
            w[c] = 0;
            if (o < end) { a->crd[o] = (I)c; a->data[o] = v; ++o; }
          }
        }
      }
    } else {
      sort_cols(cols, cnt);
      for (int64_t t = 0; t < cnt; ++t) {
        const I c = cols[t];
        const T v = w[c];
        bm[c >> 6] = 0; w[c] = 0;
        if (o < end) { a->crd[o] = c; a->data[o] = v; ++o; }
      }
    }
  }
  release(ws);
}

/* One product; returns the entries it needs (more than nse: its values are NaN). */
static int64_t run(XLA_FFI_CallFrame* cf, args_t* a) {
  int64_t bounds[257];
  const int64_t n_chunks = split_rows(a, jscorch_num_threads(cf), bounds);
  a->pos[0] = 0;
  jscorch_parallel_for(cf, count_rows, a, bounds, n_chunks);
  int64_t total = 0;
  for (int64_t i = 0; i < a->m; ++i) {
    total += a->pos[i + 1];
    a->pos[i + 1] = (I)(total < a->nse ? total : a->nse);
  }
  jscorch_parallel_for(cf, fill_rows, a, bounds, n_chunks);
  free(a->work);
  a->work = NULL;
  const int64_t used = total < a->nse ? total : a->nse;
  for (int64_t o = used; o < a->nse; ++o) { a->crd[o] = (I)a->n; a->data[o] = 0; }
  if (total > a->nse) for (int64_t o = 0; o < a->nse; ++o) a->data[o] = (T)NAN;
  return total;
}

/* The last dimension of a buffer (its capacity, or rows + 1 for pos). */
static int64_t dim0(void* buffer) {
  const XLA_FFI_Buffer* b = (const XLA_FFI_Buffer*)buffer;
  return b->rank ? b->dims[b->rank - 1] : 1;
}

/* The number of batch elements: the product of a buffer's leading dimensions. */
static int64_t batch_of(void* buffer) {
  const XLA_FFI_Buffer* b = (const XLA_FFI_Buffer*)buffer;
  int64_t n = 1;
  for (int64_t d = 0; d + 1 < b->rank; ++d) n *= b->dims[d];
  return n;
}

/* The integer scalar attribute called `key`, or `otherwise`. */
static int64_t int_attribute(XLA_FFI_CallFrame* cf, const char* key, int64_t otherwise) {
  const size_t len = strlen(key);
  for (int64_t t = 0; t < cf->attrs.size; ++t) {
    const XLA_FFI_ByteSpan* name = cf->attrs.names[t];
    if (cf->attrs.types[t] != XLA_FFI_AttrType_SCALAR || name->len != len ||
        memcmp(name->ptr, key, len) != 0)
      continue;
    const XLA_FFI_Scalar* s = (const XLA_FFI_Scalar*)cf->attrs.attrs[t];
    if (s->dtype == XLA_FFI_DataType_S64) return *(const int64_t*)s->value;
    if (s->dtype == XLA_FFI_DataType_S32) return *(const int32_t*)s->value;
  }
  return otherwise;
}

XLA_FFI_Error* SPGEMM_NAME(XLA_FFI_CallFrame* cf) {
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  args_t a;
  memset(&a, 0, sizeof(a));
  /* swap: the operands come as (B, A) (CSC x CSC -> CSC computed as C^T = B^T A^T) */
  const int64_t oa = int_attribute(cf, "swap", 0) ? 3 : 0, ob = 3 - oa;
  a.a_data = (const T*)jscorch_arg(cf, oa);
  a.a_pos = (const I*)jscorch_arg(cf, oa + 1);
  a.a_crd = (const I*)jscorch_arg(cf, oa + 2);
  a.b_data = (const T*)jscorch_arg(cf, ob);
  a.b_pos = (const I*)jscorch_arg(cf, ob + 1);
  a.b_crd = (const I*)jscorch_arg(cf, ob + 2);
  a.data = (T*)jscorch_ret(cf, 0);
  a.pos = (I*)jscorch_ret(cf, 1);
  a.crd = (I*)jscorch_ret(cf, 2);
  a.nse_a = dim0(cf->args.args[oa + 2]);
  a.nse_b = dim0(cf->args.args[ob + 2]);
  a.nse = dim0(cf->rets.rets[2]);
  const int64_t n = int_attribute(cf, "n", -1);
  if (n < 0) return jscorch_error(cf, "jscorch SpGEMM: missing int64 attribute n");
  set_sizes(&a, dim0(cf->rets.rets[1]) - 1, dim0(cf->args.args[ob + 1]) - 1, n);
  /* batched (leading dims on every buffer): one product per element, in turn */
  const int64_t batch = batch_of(cf->rets.rets[1]);
  int64_t overflow = 0;
  for (int64_t e = 0; e < batch; ++e) {
    args_t ae = a;
    ae.a_data += e * a.nse_a; ae.a_pos += e * (a.m + 1); ae.a_crd += e * a.nse_a;
    ae.b_data += e * a.nse_b; ae.b_pos += e * (a.k + 1); ae.b_crd += e * a.nse_b;
    ae.data += e * a.nse; ae.pos += e * (a.m + 1); ae.crd += e * a.nse;
    overflow |= run(cf, &ae) > a.nse;
  }
  /* one element over capacity poisons the whole result (as the portable rule does) */
  if (overflow) for (int64_t o = 0; o < batch * a.nse; ++o) a.data[o] = (T)NAN;
  return NULL;
}

typedef struct {
  const args_t* args;
  const int64_t* bounds;
  int64_t n_chunks;
  _Atomic int64_t next;
} count_job_t;

static void* count_worker(void* job_) {
  count_job_t* job = (count_job_t*)job_;
  for (;;) {
    const int64_t c = atomic_fetch_add(&job->next, 1);
    if (c >= job->n_chunks) return NULL;
    count_rows(job->args, job->bounds[c], job->bounds[c + 1]);
  }
}

/* Eager size query on host buffers: entries of A x B (m x k times k x n), counted on
   n_threads threads. */
int64_t SPGEMM_COUNT_NAME(int64_t m, int64_t k, int64_t n, const I* a_pos, const I* a_crd,
                          int64_t nse_a, const I* b_pos, const I* b_crd, int64_t nse_b,
                          int64_t n_threads) {
  args_t a;
  memset(&a, 0, sizeof(a));
  set_sizes(&a, m, k, n);
  a.a_pos = a_pos; a.a_crd = a_crd; a.b_pos = b_pos; a.b_crd = b_crd;
  a.nse_a = nse_a; a.nse_b = nse_b;
  I* counts = (I*)calloc(m + 1, sizeof(I));
  if (!counts) abort();
  a.pos = counts;
  if (n_threads < 1) n_threads = 1;
  if (n_threads > 64) n_threads = 64;
  int64_t bounds[257];
  count_job_t job = {&a, bounds, split_rows(&a, n_threads, bounds), 0};
  pthread_t threads[64];
  int64_t started = 0;
  for (; started < n_threads - 1 && started < job.n_chunks - 1; ++started)
    if (pthread_create(&threads[started], NULL, count_worker, &job)) break;
  count_worker(&job);
  for (int64_t t = 0; t < started; ++t) pthread_join(threads[t], NULL);
  free(a.work);
  int64_t total = 0;
  for (int64_t i = 0; i < m; ++i) total += counts[i + 1];
  free(counts);
  return total;
}
