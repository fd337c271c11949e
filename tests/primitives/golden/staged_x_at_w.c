/* jscorch generated kernel jscorch_k_NAME
 *   einsum  : in,io:Format(dense, compressed)->on [dense]
 *   driver  : Format(dense, compressed), shape (9, 7), nse 20
 *   mode    : vector, parallel, store */
/* (c_runtime.RUNTIME) */
typedef float T;
typedef int32_t I;
typedef T vT __attribute__((vector_size(32), aligned(sizeof(T))));
enum { VL = 32 / sizeof(T) };

typedef struct {
  const T* x0;
  const T* x1;
  const I* pos1;
  const I* crd1;
  const I* perm;
  T* out;
} args_t;

static int64_t work_before(const void* a_, int64_t u) {
  const args_t* a = (const args_t*)a_;
  if (u >= 7) return 20;
  const int64_t b = u / 7, q = u % 7;
  int64_t p = q;
  p = a->pos1[b * 8 + p]; if (p > 20) p = 20;
  return b * 20 + p;
}

static void body(const void* a_, int64_t lo, int64_t hi) {
  const args_t* a = (const args_t*)a_;
  T* restrict out = a->out;
  for (int64_t u = lo; u < hi; ++u) {
    const int64_t b = u / 7, q = u % 7;
    {
      const int64_t p0 = q, c0 = q;
      vT acc1_v0 = {0};
      vT acc1_v1 = {0};
      vT acc1_v2 = {0};
      vT acc1_v3 = {0};
      vT acc1_v4 = {0};
      vT acc1_v5 = {0};
      vT acc1_v6 = {0};
      vT acc1_v7 = {0};
      int64_t hi1 = a->pos1[b * 8 + p0 + 1]; if (hi1 > 20) hi1 = 20;
      for (int64_t p1 = a->pos1[b * 8 + p0]; p1 < hi1; ++p1) {
        const int64_t c1 = a->crd1[b * 20 + p1];
        if ((uint64_t)c1 >= 9) continue;
        const int64_t leaf = a->perm[p1];
        acc1_v0 += *(const vT*)(a->x0 + c1 * 64) * a->x1[leaf];
        acc1_v1 += *(const vT*)(a->x0 + c1 * 64 + 8) * a->x1[leaf];
        acc1_v2 += *(const vT*)(a->x0 + c1 * 64 + 16) * a->x1[leaf];
        acc1_v3 += *(const vT*)(a->x0 + c1 * 64 + 24) * a->x1[leaf];
        acc1_v4 += *(const vT*)(a->x0 + c1 * 64 + 32) * a->x1[leaf];
        acc1_v5 += *(const vT*)(a->x0 + c1 * 64 + 40) * a->x1[leaf];
        acc1_v6 += *(const vT*)(a->x0 + c1 * 64 + 48) * a->x1[leaf];
        acc1_v7 += *(const vT*)(a->x0 + c1 * 64 + 56) * a->x1[leaf];
      }
      *(vT*)(out + c0 * 64) = acc1_v0;
      *(vT*)(out + c0 * 64 + 8) = acc1_v1;
      *(vT*)(out + c0 * 64 + 16) = acc1_v2;
      *(vT*)(out + c0 * 64 + 24) = acc1_v3;
      *(vT*)(out + c0 * 64 + 32) = acc1_v4;
      *(vT*)(out + c0 * 64 + 40) = acc1_v5;
      *(vT*)(out + c0 * 64 + 48) = acc1_v6;
      *(vT*)(out + c0 * 64 + 56) = acc1_v7;
    }
  }
}

typedef int32_t vI __attribute__((vector_size(32)));
static inline void transpose_lanes(vT* r) {
  vT t[VL];
  const vI lo0 = {0, 8, 2, 10, 4, 12, 6, 14}, hi0 = {1, 9, 3, 11, 5, 13, 7, 15};
  const vI lo1 = {0, 1, 8, 9, 4, 5, 12, 13}, hi1 = {2, 3, 10, 11, 6, 7, 14, 15};
  const vI lo2 = {0, 1, 2, 3, 8, 9, 10, 11}, hi2 = {4, 5, 6, 7, 12, 13, 14, 15};
  t[0] = __builtin_shuffle(r[0], r[1], lo0); t[1] = __builtin_shuffle(r[0], r[1], hi0);
  t[2] = __builtin_shuffle(r[2], r[3], lo0); t[3] = __builtin_shuffle(r[2], r[3], hi0);
  t[4] = __builtin_shuffle(r[4], r[5], lo0); t[5] = __builtin_shuffle(r[4], r[5], hi0);
  t[6] = __builtin_shuffle(r[6], r[7], lo0); t[7] = __builtin_shuffle(r[6], r[7], hi0);
  r[0] = __builtin_shuffle(t[0], t[2], lo1); r[2] = __builtin_shuffle(t[0], t[2], hi1);
  r[1] = __builtin_shuffle(t[1], t[3], lo1); r[3] = __builtin_shuffle(t[1], t[3], hi1);
  r[4] = __builtin_shuffle(t[4], t[6], lo1); r[6] = __builtin_shuffle(t[4], t[6], hi1);
  r[5] = __builtin_shuffle(t[5], t[7], lo1); r[7] = __builtin_shuffle(t[5], t[7], hi1);
  t[0] = __builtin_shuffle(r[0], r[4], lo2); t[4] = __builtin_shuffle(r[0], r[4], hi2);
  t[1] = __builtin_shuffle(r[1], r[5], lo2); t[5] = __builtin_shuffle(r[1], r[5], hi2);
  t[2] = __builtin_shuffle(r[2], r[6], lo2); t[6] = __builtin_shuffle(r[2], r[6], hi2);
  t[3] = __builtin_shuffle(r[3], r[7], lo2); t[7] = __builtin_shuffle(r[3], r[7], hi2);
  for (int k = 0; k < VL; ++k) r[k] = t[k];
}

typedef struct {
  const args_t* a;
  T* scratch;
  int64_t per;
} tiles_t;

static void tiles(const void* s_, int64_t lo, int64_t hi) {
  const tiles_t* s = (const tiles_t*)s_;
  const args_t* a = s->a;
  args_t b = *a;
  T* scratch = s->scratch + (lo / s->per) * (int64_t)1024;
  T* s0 = scratch + 0;
  b.x0 = s0;
  T* s1 = scratch + 576;
  b.out = s1;
  for (int64_t t = lo; t < hi; ++t) {
    const int64_t n0 = t * 64, w = 45 - n0 < 64 ? 45 - n0 : 64;
    for (int64_t o = 0; o < 1; ++o) {
      const T* rows = a->x0 + (o * 45 + n0) * 9;
      T* cols = s0 + o * 576;
      const int64_t wv = w - w % VL;
      for (int64_t c = 0; c < 8; c += VL)
        for (int64_t j = 0; j < wv; j += VL) {
          vT r[VL];
          for (int k = 0; k < VL; ++k) r[k] = *(const vT*)(rows + (j + k) * 9 + c);
          transpose_lanes(r);
          for (int k = 0; k < VL; ++k) *(vT*)(cols + (c + k) * 64 + j) = r[k];
        }
      for (int64_t j = 0; j < 64; ++j)
        for (int64_t c = j < wv ? 8 : 0; c < 9; ++c)
          cols[c * 64 + j] = j < w ? rows[j * 9 + c] : 0;
    }
    body(&b, 0, 7);
    for (int64_t o = 0; o < 1; ++o) {
      T* rows = a->out + (o * 45 + n0) * 7;
      const T* cols = s1 + o * 448;
      const int64_t wv = w - w % VL;
      for (int64_t c = 0; c < 0; c += VL)
        for (int64_t j = 0; j < wv; j += VL) {
          vT r[VL];
          for (int k = 0; k < VL; ++k) r[k] = *(const vT*)(cols + (c + k) * 64 + j);
          transpose_lanes(r);
          for (int k = 0; k < VL; ++k) *(vT*)(rows + (j + k) * 7 + c) = r[k];
        }
      for (int64_t j = 0; j < w; ++j)
        for (int64_t c = j < wv ? 0 : 0; c < 7; ++c)
          rows[j * 7 + c] = cols[c * 64 + j];
    }
  }
}

XLA_FFI_Error* jscorch_k_NAME(XLA_FFI_CallFrame* cf) {
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  args_t a;
  a.x0 = (const T*)jscorch_arg(cf, 0);
  a.x1 = (const T*)jscorch_arg(cf, 1);
  a.pos1 = (const I*)jscorch_arg(cf, 2);
  a.crd1 = (const I*)jscorch_arg(cf, 3);
  a.out = (T*)jscorch_ret(cf, 0);
  I* tpos = (I*)calloc(8, sizeof(I));
  I* tcrd = (I*)malloc(sizeof(I) * 20);
  I* tperm = (I*)malloc(sizeof(I) * 20);
  I* next = (I*)malloc(sizeof(I) * 7);
  if (!tpos || !tcrd || !tperm || !next) { free(tpos); free(tcrd); free(tperm); free(next); return jscorch_error(cf, "jscorch kernel: out of memory for the transposed structure"); }
  const I* pos = (const I*)a.pos1;
  const I* crd = (const I*)a.crd1;
  for (int64_t i = 0; i < 9; ++i) {
    int64_t hi = pos[i + 1]; if (hi > 20) hi = 20;
    for (int64_t p = pos[i]; p < hi; ++p) if ((uint64_t)crd[p] < 7) ++tpos[crd[p] + 1];
  }
  for (int64_t j = 0; j < 7; ++j) { tpos[j + 1] += tpos[j]; next[j] = tpos[j]; }
  for (int64_t i = 0; i < 9; ++i) {
    int64_t hi = pos[i + 1]; if (hi > 20) hi = 20;
    for (int64_t p = pos[i]; p < hi; ++p) {
      const int64_t c = crd[p];
      if ((uint64_t)c >= 7) continue;
      const int64_t q = next[c]++;
      tcrd[q] = (I)i; tperm[q] = (I)p;
    }
  }
  free(next);
  a.pos1 = tpos; a.crd1 = tcrd; a.perm = tperm;
  int64_t n_chunks = 1;
  if (n_chunks > 1) n_chunks = 1;
  const int64_t per = (1 + n_chunks - 1) / n_chunks;
  n_chunks = (1 + per - 1) / per;
  int64_t bounds[257];
  for (int64_t c = 0; c <= n_chunks; ++c) bounds[c] = c * per < 1 ? c * per : 1;
  T* scratch = (T*)malloc(sizeof(T) * 1024 * (size_t)n_chunks);
  if (!scratch) { free(tpos); free(tcrd); free(tperm); return jscorch_error(cf, "jscorch kernel: out of memory for the staged tiles"); }
  tiles_t s = {&a, scratch, per};
  jscorch_parallel_for(cf, tiles, &s, bounds, n_chunks);
  free(scratch);
  free(tpos); free(tcrd); free(tperm);
  return NULL;
}
