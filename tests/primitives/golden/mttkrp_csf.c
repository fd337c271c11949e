/* jscorch generated kernel jscorch_k_NAME
 *   einsum  : ijk:Format(compressed, compressed, compressed),jr,kr->ir [dense]
 *   driver  : Format(compressed, compressed, compressed), shape (5, 6, 7), nse 30
 *   mode    : vector, parallel, accumulate */
/* (c_runtime.RUNTIME) */
typedef float T;
typedef int32_t I;
typedef T vT __attribute__((vector_size(32), aligned(sizeof(T))));
enum { VL = 32 / sizeof(T) };

typedef struct {
  const T* x0;
  const T* x1;
  const T* x2;
  const I* pos0;
  const I* crd0;
  const I* pos1;
  const I* crd1;
  const I* pos2;
  const I* crd2;
  const I* perm;
  T* out;
} args_t;

static int64_t work_before(const void* a_, int64_t u) {
  const args_t* a = (const args_t*)a_;
  if (u >= 5) return 30;
  const int64_t b = u / 5, q = u % 5;
  int64_t p = q;
  p = a->pos1[b * 6 + p]; if (p > 30) p = 30;
  p = a->pos2[b * 31 + p]; if (p > 30) p = 30;
  return b * 30 + p;
}

static void body(const void* a_, int64_t lo, int64_t hi) {
  const args_t* a = (const args_t*)a_;
  T* restrict out = a->out;
  for (int64_t u = lo; u < hi; ++u) {
    const int64_t b = u / 5, q = u % 5;
    if (q < (int64_t)a->pos0[b * 2 + 1]) {
      const int64_t p0 = q, c0 = a->crd0[b * 5 + p0];
      if ((uint64_t)c0 >= 5) continue;
      vT acc1_v0 = {0};
      vT acc1_v1 = {0};
      int64_t hi1 = a->pos1[b * 6 + p0 + 1]; if (hi1 > 30) hi1 = 30;
      for (int64_t p1 = a->pos1[b * 6 + p0]; p1 < hi1; ++p1) {
        const int64_t c1 = a->crd1[b * 30 + p1];
        if ((uint64_t)c1 >= 6) continue;
        vT acc2_v0 = {0};
        vT acc2_v1 = {0};
        vT acc2_w1_v0 = {0};
        vT acc2_w1_v1 = {0};
        int64_t hi2 = a->pos2[b * 31 + p1 + 1]; if (hi2 > 30) hi2 = 30;
        int64_t u2 = a->pos2[b * 31 + p1];
        for (; u2 + 1 < hi2; u2 += 2) {
          do {
            const int64_t p2 = u2, c2 = a->crd2[b * 30 + p2];
            if ((uint64_t)c2 >= 7) continue;
            const int64_t leaf = b * 30 + p2;
            acc2_v0 += a->x0[leaf] * *(const vT*)(a->x2 + c2 * 16);
            acc2_v1 += a->x0[leaf] * *(const vT*)(a->x2 + c2 * 16 + 8);
          } while (0);
          do {
            const int64_t p2 = u2 + 1, c2 = a->crd2[b * 30 + p2];
            if ((uint64_t)c2 >= 7) continue;
            const int64_t leaf = b * 30 + p2;
            acc2_w1_v0 += a->x0[leaf] * *(const vT*)(a->x2 + c2 * 16);
            acc2_w1_v1 += a->x0[leaf] * *(const vT*)(a->x2 + c2 * 16 + 8);
          } while (0);
        }
        for (; u2 < hi2; ++u2) {
          do {
            const int64_t p2 = u2, c2 = a->crd2[b * 30 + p2];
            if ((uint64_t)c2 >= 7) continue;
            const int64_t leaf = b * 30 + p2;
            acc2_v0 += a->x0[leaf] * *(const vT*)(a->x2 + c2 * 16);
            acc2_v1 += a->x0[leaf] * *(const vT*)(a->x2 + c2 * 16 + 8);
          } while (0);
        }
        acc2_v0 += acc2_w1_v0;
        acc2_v1 += acc2_w1_v1;
        acc1_v0 += *(const vT*)(a->x1 + c1 * 16) * acc2_v0;
        acc1_v1 += *(const vT*)(a->x1 + c1 * 16 + 8) * acc2_v1;
      }
      *(vT*)(out + c0 * 16) += acc1_v0;
      *(vT*)(out + c0 * 16 + 8) += acc1_v1;
    }
  }
}

XLA_FFI_Error* jscorch_k_NAME(XLA_FFI_CallFrame* cf) {
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  args_t a;
  a.x0 = (const T*)jscorch_arg(cf, 0);
  a.x1 = (const T*)jscorch_arg(cf, 7);
  a.x2 = (const T*)jscorch_arg(cf, 8);
  a.pos0 = (const I*)jscorch_arg(cf, 1);
  a.crd0 = (const I*)jscorch_arg(cf, 2);
  a.pos1 = (const I*)jscorch_arg(cf, 3);
  a.crd1 = (const I*)jscorch_arg(cf, 4);
  a.pos2 = (const I*)jscorch_arg(cf, 5);
  a.crd2 = (const I*)jscorch_arg(cf, 6);
  a.out = (T*)jscorch_ret(cf, 0);
  memset(a.out, 0, sizeof(T) * (size_t)80);
  body(&a, 0, 5);
  return NULL;
}
