/* jscorch generated kernel jscorch_k_NAME
 *   einsum  : ij:Format(dense, compressed),jk->ik [dense]
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
      const int64_t p0 = q, c0 = q;
      vT acc1_v0 = {0};
      vT acc1_v1 = {0};
      T acc1_s0 = 0;
      T acc1_s1 = 0;
      T acc1_s2 = 0;
      int64_t hi1 = a->pos1[b * 7 + p0 + 1]; if (hi1 > 20) hi1 = 20;
      for (int64_t p1 = a->pos1[b * 7 + p0]; p1 < hi1; ++p1) {
        const int64_t c1 = a->crd1[b * 20 + p1];
        if ((uint64_t)c1 >= 7) continue;
        const int64_t leaf = b * 20 + p1;
        acc1_v0 += a->x0[leaf] * *(const vT*)(a->x1 + c1 * 19);
        acc1_v1 += a->x0[leaf] * *(const vT*)(a->x1 + c1 * 19 + 8);
        acc1_s0 += a->x0[leaf] * (a->x1 + c1 * 19 + 16)[0];
        acc1_s1 += a->x0[leaf] * (a->x1 + c1 * 19 + 17)[0];
        acc1_s2 += a->x0[leaf] * (a->x1 + c1 * 19 + 18)[0];
      }
      *(vT*)(out + c0 * 19) = acc1_v0;
      *(vT*)(out + c0 * 19 + 8) = acc1_v1;
      out[c0 * 19 + 16] = acc1_s0;
      out[c0 * 19 + 17] = acc1_s1;
      out[c0 * 19 + 18] = acc1_s2;
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
  body(&a, 0, 6);
  return NULL;
}
