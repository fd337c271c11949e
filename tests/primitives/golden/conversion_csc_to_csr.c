/* jscorch structure kernel jscorch_s_NAME
 *   from: Format(dense, compressed, mode_ordering=(1, 0)) (4, 5) nse=6 (6 entries)
 *   to: Format(dense, compressed) (4, 5) nse=6
 *   sort: destination levels (0,) (least significant first)
 *   dups: kept
 *   plan: transpose: a counting sort
 */
/* (RUNTIME) */

typedef int32_t idx_t;
typedef int32_t sidx_t;
typedef int32_t ord_t;
#define N_ARGS 2
#define N_RETS 4
#define N_SLOTS 4
/* (SCRATCH) */

#define L 2
#define N_IN 6LL
#define NSE 6LL
#define SUMS 0
static const int DST_KIND[L] = {0, 1};
static const int DST_UNIQUE[L] = {1, 1};
static const int64_t DST_SIZE[L] = {4, 5};
static const int64_t DST_CAP[L] = {4, 6};
static const int64_t DST_PCAP[L] = {1, 4};

/* (BUILDER) */

static void transpose_count(const void* p, int64_t lo, int64_t hi) {
  const chunk_args* t = (const chunk_args*)p;
  const structure_args* a = t->a;
  const int64_t b = t->b;
  const sidx_t* spos1 = (const sidx_t*)a->in[0] + b * 6LL; (void)spos1;
  const sidx_t* scrd1 = (const sidx_t*)a->in[1] + b * 6LL; (void)scrd1;
  idx_t* pos1 = (idx_t*)a->out[0] + b * 5LL; (void)pos1;
  idx_t* crd1 = (idx_t*)a->out[1] + b * 6LL; (void)crd1;
  idx_t* source = (idx_t*)a->out[2] + b * 6LL; (void)source;
  idx_t* count = (idx_t*)a->out[3] + b * 1LL; (void)count;
  for (int64_t c = lo; c < hi; ++c) {
    int64_t* h = t->counts + c * 4LL;
    {
      for (int64_t q0 = t->bounds[c] > 0 ? t->bounds[c] : 0; q0 < 5LL && q0 < t->bounds[c + 1]; ++q0) {
        int64_t c0 = q0;
        int ok0 = c0 >= 0 && c0 < 5LL;
        int64_t lo1 = clamp64((int64_t)spos1[q0], 0, 6LL);
        int64_t hi1 = clamp64((int64_t)spos1[q0 + 1], lo1, 6LL);
        for (int64_t q1 = lo1; q1 < hi1; ++q1) {
          int64_t c1 = (int64_t)scrd1[q1];
          int ok1 = ok0 && c1 >= 0 && c1 < 4LL;
          {
            int64_t e = q1; int ok = ok1; int64_t row[2] = {c1, c0};
            if (ok) h[row[0]]++;
          }
        }
      }
    }
  }
}

static void transpose_scatter(const void* p, int64_t lo, int64_t hi) {
  const chunk_args* t = (const chunk_args*)p;
  const structure_args* a = t->a;
  const int64_t b = t->b;
  const sidx_t* spos1 = (const sidx_t*)a->in[0] + b * 6LL; (void)spos1;
  const sidx_t* scrd1 = (const sidx_t*)a->in[1] + b * 6LL; (void)scrd1;
  idx_t* pos1 = (idx_t*)a->out[0] + b * 5LL; (void)pos1;
  idx_t* crd1 = (idx_t*)a->out[1] + b * 6LL; (void)crd1;
  idx_t* source = (idx_t*)a->out[2] + b * 6LL; (void)source;
  idx_t* count = (idx_t*)a->out[3] + b * 1LL; (void)count;
  for (int64_t c = lo; c < hi; ++c) {
    int64_t* h = t->counts + c * 4LL;
    {
      for (int64_t q0 = t->bounds[c] > 0 ? t->bounds[c] : 0; q0 < 5LL && q0 < t->bounds[c + 1]; ++q0) {
        int64_t c0 = q0;
        int ok0 = c0 >= 0 && c0 < 5LL;
        int64_t lo1 = clamp64((int64_t)spos1[q0], 0, 6LL);
        int64_t hi1 = clamp64((int64_t)spos1[q0 + 1], lo1, 6LL);
        for (int64_t q1 = lo1; q1 < hi1; ++q1) {
          int64_t c1 = (int64_t)scrd1[q1];
          int ok1 = ok0 && c1 >= 0 && c1 < 4LL;
          {
            int64_t e = q1; int ok = ok1; int64_t row[2] = {c1, c0};
            if (ok) {
              int64_t slot = h[row[0]]++;
              if (slot < 6LL) crd1[slot] = (idx_t)row[1];
              if (slot < 6LL) source[slot] = (idx_t)e;
            }
          }
        }
      }
    }
  }
}

static void outer_extent(const structure_args* a, int64_t b, int64_t* lo, int64_t* hi) {
  const sidx_t* spos1 = (const sidx_t*)a->in[0] + b * 6LL; (void)spos1;
  const sidx_t* scrd1 = (const sidx_t*)a->in[1] + b * 6LL; (void)scrd1;
  idx_t* pos1 = (idx_t*)a->out[0] + b * 5LL; (void)pos1;
  idx_t* crd1 = (idx_t*)a->out[1] + b * 6LL; (void)crd1;
  idx_t* source = (idx_t*)a->out[2] + b * 6LL; (void)source;
  idx_t* count = (idx_t*)a->out[3] + b * 1LL; (void)count;
  int64_t olo = 0, ohi = 5LL;
  *lo = olo; *hi = ohi;
}


/* The counting sort on several threads: each chunk counts its entries per row, a serial
   prefix sum turns the counts into each chunk's write offsets (chunks in order, so the
   sort stays stable), then every chunk scatters its own entries. It writes every output
   (the builder is not initialised before it). */
static void outer_extent(const structure_args* a, int64_t b, int64_t* lo, int64_t* hi);

static int transpose_parallel(const structure_args* a, int64_t b, int64_t chunks) {
  int64_t* offset = (int64_t*)scratch(1, sizeof(int64_t) * chunks * 4LL);
  int64_t* bounds = (int64_t*)scratch(1 + 1, sizeof(int64_t) * (2 * chunks + 2));
  if (!offset || !bounds) return -1;
  int64_t* units = bounds + chunks + 1;
  int64_t olo, ohi;
  outer_extent(a, b, &olo, &ohi);
  for (int64_t c = 0; c <= chunks; ++c) {
    bounds[c] = olo + (ohi - olo) * c / chunks;
    units[c] = c;
  }
  memset(offset, 0, sizeof(int64_t) * chunks * 4LL);
  chunk_args t = {a, b, offset, bounds, NULL, NULL};
  jscorch_parallel_for(a->cf, transpose_count, &t, units, chunks);
  idx_t* pos = (idx_t*)a->out[0] + b * (4LL + 1);
  pos[0] = 0;
  int64_t run = 0;
  for (int64_t v = 0; v < 4LL; ++v) {
    for (int64_t c = 0; c < chunks; ++c) {
      int64_t k = offset[c * 4LL + v];
      offset[c * 4LL + v] = run;
      run += k;
    }
    pos[v + 1] = (idx_t)(run < 6LL ? run : 6LL);
  }
  jscorch_parallel_for(a->cf, transpose_scatter, &t, units, chunks);
  idx_t* crd = (idx_t*)a->out[1] + b * 6LL;
  for (int64_t q = run; q < 6LL; ++q) crd[q] = (idx_t)5LL;
  idx_t* source = (idx_t*)a->out[2] + b * NSE;
  for (int64_t q = run; q < NSE; ++q) source[q] = (idx_t)N_IN;
  *((idx_t*)a->out[3] + b) = (idx_t)run;
  return 0;
}

static int structure_one(const structure_args* a, int64_t b) {
  const sidx_t* spos1 = (const sidx_t*)a->in[0] + b * 6LL; (void)spos1;
  const sidx_t* scrd1 = (const sidx_t*)a->in[1] + b * 6LL; (void)scrd1;
  idx_t* pos1 = (idx_t*)a->out[0] + b * 5LL; (void)pos1;
  idx_t* crd1 = (idx_t*)a->out[1] + b * 6LL; (void)crd1;
  idx_t* source = (idx_t*)a->out[2] + b * 6LL; (void)source;
  idx_t* count = (idx_t*)a->out[3] + b * 1LL; (void)count;
  int64_t* next = (int64_t*)scratch(0, sizeof(int64_t) * 5LL);
  if (!next) return -1;
  if (a->batch == 1 && 6LL >= 32768LL) {
    int64_t threads = jscorch_num_threads(a->cf);
    if (threads > 1) return transpose_parallel(a, b, threads < 8 ? threads : 8);
  }
  builder o;
  o.pos[0] = NULL; o.crd[0] = NULL;
  o.pos[1] = pos1; o.crd[1] = crd1;
  o.map = source; o.count = count;
  builder_init(&o);
  {
    {
      for (int64_t q0 = 0; q0 < 5LL; ++q0) {
        int64_t c0 = q0;
        int ok0 = c0 >= 0 && c0 < 5LL;
        int64_t lo1 = clamp64((int64_t)spos1[q0], 0, 6LL);
        int64_t hi1 = clamp64((int64_t)spos1[q0 + 1], lo1, 6LL);
        for (int64_t q1 = lo1; q1 < hi1; ++q1) {
          int64_t c1 = (int64_t)scrd1[q1];
          int ok1 = ok0 && c1 >= 0 && c1 < 4LL;
          {
            int64_t e = q1; int ok = ok1; int64_t row[2] = {c1, c0};
            if (ok) pos1[row[0] + 1]++;
          }
        }
      }
    }
    int64_t run = 0;
    for (int64_t p = 0; p < 4LL; ++p) {
      next[p] = run;
      run += pos1[p + 1];
      pos1[p + 1] = (idx_t)(run < 6LL ? run : 6LL);
    }
    {
      for (int64_t q0 = 0; q0 < 5LL; ++q0) {
        int64_t c0 = q0;
        int ok0 = c0 >= 0 && c0 < 5LL;
        int64_t lo1 = clamp64((int64_t)spos1[q0], 0, 6LL);
        int64_t hi1 = clamp64((int64_t)spos1[q0 + 1], lo1, 6LL);
        for (int64_t q1 = lo1; q1 < hi1; ++q1) {
          int64_t c1 = (int64_t)scrd1[q1];
          int ok1 = ok0 && c1 >= 0 && c1 < 4LL;
          {
            int64_t e = q1; int ok = ok1; int64_t row[2] = {c1, c0};
            if (ok) {
              int64_t slot = next[row[0]]++;
              if (slot < 6LL) crd1[slot] = (idx_t)row[1];
              if (slot < 6LL) source[slot] = (idx_t)e;
            }
          }
        }
      }
    }
  }
  const int64_t run = next[3];
  for (int64_t q = run; q < 6LL; ++q) crd1[q] = (idx_t)5LL;
  count[0] = (idx_t)run;
  return 0;
}


typedef struct { const structure_args* a; _Atomic int failed; } batch_args;

static void batch_body(const void* p, int64_t lo, int64_t hi) {
  batch_args* ba = (batch_args*)p;
  for (int64_t b = lo; b < hi; ++b)
    if (structure_one(ba->a, b)) atomic_store(&ba->failed, 1);
}

XLA_FFI_Error* jscorch_s_NAME(XLA_FFI_CallFrame* cf) {
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  structure_args a;
  if ((int)cf->args.size != N_ARGS || (int)cf->rets.size != N_RETS)
    return jscorch_error(cf, "jscorch_structure: wrong number of buffers");
  for (int i = 0; i < N_ARGS; ++i) a.in[i] = jscorch_arg(cf, i);
  for (int i = 0; i < N_RETS; ++i) a.out[i] = jscorch_ret(cf, i);
  XLA_FFI_Buffer* last = (XLA_FFI_Buffer*)cf->rets.rets[N_RETS - 1];
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

