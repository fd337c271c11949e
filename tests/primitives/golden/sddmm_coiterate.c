/* jscorch generated kernel jscorch_k_NAME
 *   einsum  : ij:Format(dense, compressed),ik,jk->ij [sampled]
 *   driver  : Format(dense, compressed), shape (6, 7), nse 20
 *   mode    : scalar, parallel, accumulate */
/* (c_runtime.RUNTIME) */
typedef float T;
typedef int32_t I;
typedef T vT __attribute__((vector_size(32), aligned(sizeof(T))));
enum { VL = 32 / sizeof(T) };

typedef struct {
  const T* x0;
  const T* x1;
  const T* x2;
  const I* pos1;
  const I* crd1;
  const I* pos1_1;
  const I* crd1_1;
  const I* perm;
  T* out;
} args_t;

static int64_t work_before(const void* a_, int64_t u) {
  const args_t* a = (const args_t*)a_;
  if (u >= 6) return 20;
  const int64_t b = u / 6, q = u % 6;
  int64_t p = q;
  p = a->pos1[b * 7 + p]; if (p > 20) p = 20;
  return b * 20 + p;
}

static void body(const void* a_, int64_t lo, int64_t hi) {
  const args_t* a = (const args_t*)a_;
  T* restrict out = a->out;
  for (int64_t u = lo; u < hi; ++u) {
    const int64_t b = u / 6, q = u % 6;
    {
      const int64_t c0 = q;
      const int64_t p0 = q;
      const int64_t p0_1 = q;
      int64_t q1 = a->pos1[b * 7 + p0];
      int64_t hi1 = a->pos1[b * 7 + p0 + 1]; if (hi1 > 20) hi1 = 20;
      int64_t q1_1 = a->pos1_1[b * 7 + p0_1];
      int64_t hi1_1 = a->pos1_1[b * 7 + p0_1 + 1]; if (hi1_1 > 20) hi1_1 = 20;
      while (q1 < hi1 && q1_1 < hi1_1) {
        const int64_t k1_0 = a->crd1[b * 20 + q1];
        const int64_t k1_1 = a->crd1_1[b * 20 + q1_1];
        int64_t c1 = k1_0;
        if (k1_1 > c1) c1 = k1_1;
        if (k1_0 == c1 && k1_1 == c1) {
          if ((uint64_t)c1 >= 7) break;
          const int64_t p1 = q1; const int64_t p1_1 = q1_1;
          do {
            const int64_t leaf = b * 20 + p1;
            const int64_t leaf_1 = b * 20 + p1_1;
            T s = 0;
            for (int64_t f10 = 0; f10 < 16; ++f10) {
              s += a->x0[leaf] * a->x1[c0 * 16 + f10] * a->x2[c1 * 16 + f10];
            }
            out[leaf_1] += s;
          } while (0);
          ++q1; ++q1_1;
        } else {
          if (k1_0 < c1) ++q1;
          if (k1_1 < c1) ++q1_1;
        }
      }
    }
  }
}

XLA_FFI_Error* jscorch_k_NAME(XLA_FFI_CallFrame* cf) {
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  args_t a;
  a.x0 = (const T*)jscorch_arg(cf, 0);
  a.x1 = (const T*)jscorch_arg(cf, 3);
  a.x2 = (const T*)jscorch_arg(cf, 4);
  a.pos1 = (const I*)jscorch_arg(cf, 1);
  a.crd1 = (const I*)jscorch_arg(cf, 2);
  a.pos1_1 = (const I*)jscorch_arg(cf, 5);
  a.crd1_1 = (const I*)jscorch_arg(cf, 6);
  a.out = (T*)jscorch_ret(cf, 0);
  memset(a.out, 0, sizeof(T) * (size_t)20);
  body(&a, 0, 6);
  return NULL;
}
