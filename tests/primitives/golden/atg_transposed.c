/* jscorch generated kernel jscorch_k_NAME
 *   einsum  : ji:Format(dense, compressed),jk->ik [dense]
 *   driver  : Format(dense, compressed), shape (6, 7), nse 20
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
      vT acc1_w1_v0 = {0};
      vT acc1_w1_v1 = {0};
      int64_t hi1 = a->pos1[b * 8 + p0 + 1]; if (hi1 > 20) hi1 = 20;
      int64_t u1 = a->pos1[b * 8 + p0];
      for (; u1 + 1 < hi1; u1 += 2) {
        do {
          const int64_t p1 = u1, c1 = a->crd1[b * 20 + p1];
          if ((uint64_t)c1 >= 6) continue;
          const int64_t leaf = a->perm[p1];
          acc1_v0 += a->x0[leaf] * *(const vT*)(a->x1 + c1 * 16);
          acc1_v1 += a->x0[leaf] * *(const vT*)(a->x1 + c1 * 16 + 8);
        } while (0);
        do {
          const int64_t p1 = u1 + 1, c1 = a->crd1[b * 20 + p1];
          if ((uint64_t)c1 >= 6) continue;
          const int64_t leaf = a->perm[p1];
          acc1_w1_v0 += a->x0[leaf] * *(const vT*)(a->x1 + c1 * 16);
          acc1_w1_v1 += a->x0[leaf] * *(const vT*)(a->x1 + c1 * 16 + 8);
        } while (0);
      }
      for (; u1 < hi1; ++u1) {
        do {
          const int64_t p1 = u1, c1 = a->crd1[b * 20 + p1];
          if ((uint64_t)c1 >= 6) continue;
          const int64_t leaf = a->perm[p1];
          acc1_v0 += a->x0[leaf] * *(const vT*)(a->x1 + c1 * 16);
          acc1_v1 += a->x0[leaf] * *(const vT*)(a->x1 + c1 * 16 + 8);
        } while (0);
      }
      acc1_v0 += acc1_w1_v0;
      acc1_v1 += acc1_w1_v1;
      *(vT*)(out + c0 * 16) = acc1_v0;
      *(vT*)(out + c0 * 16 + 8) = acc1_v1;
    }
  }
}

XLA_FFI_Error* jscorch_k_NAME(XLA_FFI_CallFrame* cf) {
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  args_t a;
  a.x0 = (const T*)jscorch_arg(cf, 0);
  a.x1 = (const T*)jscorch_arg(cf, 3);
  a.pos1 = (const I*)jscorch_arg(cf, 1);
  a.crd1 = (const I*)jscorch_arg(cf, 2);
  a.out = (T*)jscorch_ret(cf, 0);
  I* tpos = (I*)calloc(8, sizeof(I));
  I* tcrd = (I*)malloc(sizeof(I) * 20);
  I* tperm = (I*)malloc(sizeof(I) * 20);
  I* next = (I*)malloc(sizeof(I) * 7);
  if (!tpos || !tcrd || !tperm || !next) { free(tpos); free(tcrd); free(tperm); free(next); return jscorch_error(cf, "jscorch kernel: out of memory for the transposed structure"); }
  const I* pos = (const I*)a.pos1;
  const I* crd = (const I*)a.crd1;
  for (int64_t i = 0; i < 6; ++i) {
    int64_t hi = pos[i + 1]; if (hi > 20) hi = 20;
    for (int64_t p = pos[i]; p < hi; ++p) if ((uint64_t)crd[p] < 7) ++tpos[crd[p] + 1];
  }
  for (int64_t j = 0; j < 7; ++j) { tpos[j + 1] += tpos[j]; next[j] = tpos[j]; }
  for (int64_t i = 0; i < 6; ++i) {
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
  body(&a, 0, 7);
  free(tpos); free(tcrd); free(tperm);
  return NULL;
}
