"""Fixed C text of the conversion printer (:mod:`.convert`): the run-time helpers its
printed nodes call -- scratch memory, the destination builder (:class:`~.loopnest.Emit`),
the chunked counting sort and order-preserving walk, the bucket and radix sorts, and the
FFI handler over batch elements. Upper-case words are filled in by the printer.

Example:
  >>> "static void builder_finish" in BUILDER
  True
"""

SCRATCH = r"""
typedef struct {
  const void* in[N_ARGS];
  void* out[N_RETS];
  XLA_FFI_CallFrame* cf;          /* for XLA's thread pool */
  int64_t batch;
} structure_args;

/* Scratch memory reused across calls (per thread, grow-only): large temporaries would
   otherwise cost a page fault per 4 KiB on every call. */
static _Thread_local void* scratch_ptr[N_SLOTS];
static _Thread_local size_t scratch_len[N_SLOTS];

static void* scratch(int slot, size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (scratch_len[slot] < bytes) {
    free(scratch_ptr[slot]);
    scratch_ptr[slot] = malloc(bytes);
    scratch_len[slot] = scratch_ptr[slot] ? bytes : 0;
  }
  return scratch_ptr[slot];
}

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

/* A walk split in chunks of outermost source positions. */
typedef struct {
  const structure_args* a;
  int64_t b;
  int64_t* counts;                /* [chunk][...] counts, then write offsets */
  const int64_t* bounds;          /* outermost positions of each chunk */
  int64_t* cover;                 /* [chunk][2]: the entries each chunk wrote, [lo, hi) */
  const int64_t* stops;           /* [chunk]: where the next chunk's first run begins */
} chunk_args;
"""

BUILDER = r"""
/* The destination, assembled entry by entry (entries arrive in destination order). */
typedef struct {
  idx_t* pos[L];
  idx_t* crd[L];
  idx_t* map;            /* SUMS: the slot of each entry (dest); else the entry of each slot */
  idx_t* count;
  int64_t cnt[L], last_c[L], last_parent[L], last_child[L];
  int64_t rows, prev_slot, filled;
  int64_t prev[L];
  int has_prev;
} builder;

static void builder_init(builder* o) {
  for (int k = 0; k < L; ++k) {
    if (DST_KIND[k] == 1) memset(o->pos[k], 0, sizeof(idx_t) * (DST_PCAP[k] + 1));
    if (DST_KIND[k] == 2)
      for (int64_t q = 0; q < DST_CAP[k]; ++q) o->crd[k][q] = (idx_t)DST_SIZE[k];
    o->cnt[k] = 0; o->last_c[k] = -1; o->last_parent[k] = -1; o->last_child[k] = -1;
  }
  if (!SUMS)
    for (int64_t q = 0; q < NSE; ++q) o->map[q] = (idx_t)N_IN;
  o->rows = 0;
  o->prev_slot = NSE;
  o->filled = 0;
  o->has_prev = 0;
}

/* Records that entry e goes to slot (NSE: nowhere). SUMS: dest[e] = slot, with every entry
   skipped before e (padding) marked NSE; else source[slot] = e. */
static inline void set_dest(builder* o, int64_t e, int64_t slot) {
#if SUMS
  if (e >= o->filled) {
    for (int64_t i = o->filled; i < e; ++i) o->map[i] = (idx_t)NSE;
    o->filled = e + 1;
  }
  o->map[e] = (idx_t)slot;
#else
  if (slot < NSE) o->map[slot] = (idx_t)e;
#endif
}

static inline void append(builder* o, int64_t e, const int64_t* row) {
  if (SUMS && o->has_prev) {
    int same = 1;
    for (int k = 0; k < L; ++k) same &= row[k] == o->prev[k];
    if (same) { set_dest(o, e, o->prev_slot); return; }
  }
  for (int k = 0; k < L; ++k) o->prev[k] = row[k];
  o->has_prev = 1;
  ++o->rows;
  int64_t node = 0;
  for (int k = 0; k < L; ++k) {
    int64_t c = row[k];
    if (DST_KIND[k] == 0) {
      node = node * DST_SIZE[k] + c;
    } else if (DST_KIND[k] == 1) {
      int fresh = !DST_UNIQUE[k] || o->cnt[k] == 0 || c != o->last_c[k] ||
                  node != o->last_parent[k];
      if (fresh) {
        int64_t child = o->cnt[k]++;
        if (child < DST_CAP[k]) o->crd[k][child] = (idx_t)c;
        if (node < DST_PCAP[k]) o->pos[k][node + 1]++;
        o->last_c[k] = c; o->last_parent[k] = node; o->last_child[k] = child;
      }
      node = o->last_child[k];
    } else {
      if (node < DST_CAP[k]) o->crd[k][node] = (idx_t)c;
    }
  }
  o->prev_slot = node < NSE ? node : NSE;
  set_dest(o, e, o->prev_slot);
}

/* Prefix sums of the pos counts, the crd tails, the rest of dest and the count. */
static void builder_finish(builder* o) {
  int64_t count = -1;
  for (int k = 0; k < L; ++k) {
    if (DST_KIND[k] != 1) continue;
    int64_t run = 0;
    for (int64_t p = 0; p < DST_PCAP[k]; ++p) {
      run += o->pos[k][p + 1];
      o->pos[k][p + 1] = (idx_t)(run < DST_CAP[k] ? run : DST_CAP[k]);
    }
    for (int64_t q = o->cnt[k]; q < DST_CAP[k]; ++q) o->crd[k][q] = (idx_t)DST_SIZE[k];
    count = o->cnt[k];
  }
  if (SUMS)
    for (int64_t i = o->filled; i < N_IN; ++i) o->map[i] = (idx_t)NSE;
  *o->count = (idx_t)(count < 0 ? o->rows : count);
}
"""

TRANSPOSE = r"""
/* The counting sort on several threads: each chunk counts its entries per row, a serial
   prefix sum turns the counts into each chunk's write offsets (chunks in order, so the
   sort stays stable), then every chunk scatters its own entries. It writes every output
   (the builder is not initialised before it). */
static void outer_extent(const structure_args* a, int64_t b, int64_t* lo, int64_t* hi);

static int transpose_parallel(const structure_args* a, int64_t b, int64_t chunks) {
  int64_t* offset = (int64_t*)scratch(SLOT, sizeof(int64_t) * chunks * ROWS);
  int64_t* bounds = (int64_t*)scratch(SLOT + 1, sizeof(int64_t) * (2 * chunks + 2));
  if (!offset || !bounds) return -1;
  int64_t* units = bounds + chunks + 1;
  int64_t olo, ohi;
  outer_extent(a, b, &olo, &ohi);
  for (int64_t c = 0; c <= chunks; ++c) {
    bounds[c] = olo + (ohi - olo) * c / chunks;
    units[c] = c;
  }
  memset(offset, 0, sizeof(int64_t) * chunks * ROWS);
  chunk_args t = {a, b, offset, bounds, NULL, NULL};
  jscorch_parallel_for(a->cf, transpose_count, &t, units, chunks);
  idx_t* pos = (idx_t*)a->out[POS_RET] + b * (ROWS + 1);
  pos[0] = 0;
  int64_t run = 0;
  for (int64_t v = 0; v < ROWS; ++v) {
    for (int64_t c = 0; c < chunks; ++c) {
      int64_t k = offset[c * ROWS + v];
      offset[c * ROWS + v] = run;
      run += k;
    }
    pos[v + 1] = (idx_t)(run < CAP ? run : CAP);
  }
  jscorch_parallel_for(a->cf, transpose_scatter, &t, units, chunks);
  idx_t* crd = (idx_t*)a->out[CRD_RET] + b * CAP;
  for (int64_t q = run; q < CAP; ++q) crd[q] = (idx_t)PAD;
  idx_t* source = (idx_t*)a->out[MAP_RET] + b * NSE;
  for (int64_t q = run; q < NSE; ++q) source[q] = (idx_t)N_IN;
  *((idx_t*)a->out[COUNT_RET] + b) = (idx_t)run;
  return 0;
}
"""

PASS = r"""
/* per-chunk histogram rows, a cache line apart (no false sharing) */
#define PASS_STRIDE ((PASS_PCAP + 15) / 8 * 8)
/* A run this short is written as one fixed-width block (constant trip count, vector
   stores, no mispredicted loop exit); the entries past its end belong to the runs after
   it in the same chunk, which overwrite them. */
#define RUN_W (128 / (int)sizeof(idx_t))

static inline void fill_run(idx_t* o, int64_t rlo, int64_t rhi, idx_t x, int64_t stop) {
  if (rhi - rlo <= RUN_W && rlo + RUN_W <= stop) {
    for (int k = 0; k < RUN_W; ++k) o[rlo + k] = x;
  } else {
    for (int64_t q = rlo; q < rhi; ++q) o[q] = x;
  }
}

static inline void pass_pad(idx_t* const* out_crd, int64_t lo, int64_t hi) {
  for (int i = 0; i < PASS_N; ++i) {
    const idx_t pad = (idx_t)PASS_PAD[i];
    for (int64_t q = lo; q < hi; ++q) out_crd[i][q] = pad;
  }
}
"""

PASS_ONE = r"""
static int pass_one(const structure_args* a, int64_t b) {
  int64_t chunks = 1;
  if (a->batch == 1 && N_ENTRIES >= SPLIT) {
    int64_t threads = jscorch_num_threads(a->cf);
    chunks = threads < 1 ? 1 : threads < 8 ? threads : 8;
  }
  int64_t* counts = (int64_t*)scratch(SLOT, sizeof(int64_t) * chunks * PASS_STRIDE);
  int64_t* bounds = (int64_t*)scratch(SLOT + 1, sizeof(int64_t) * (5 * chunks + 2));
  if (!counts || !bounds) return -1;
  int64_t* units = bounds + chunks + 1;
  int64_t* cover = units + chunks + 1;
  int64_t* stops = cover + 2 * chunks;
  int64_t olo, ohi;
  outer_extent(a, b, &olo, &ohi);
  for (int64_t c = 0; c <= chunks; ++c) {
    bounds[c] = olo + (ohi - olo) * c / chunks;
    units[c] = c;
  }
  /* a chunk's block writes stay below the next non-empty chunk's first entry (padding
     after the last one is written after the walk) */
  for (int64_t c = 0; c < chunks; ++c)
    stops[c] = c + 1 < chunks ? first_run(a, b, bounds[c + 1], ohi) : PASS_NSE;
  memset(counts, 0, sizeof(int64_t) * chunks * PASS_STRIDE);
  chunk_args t = {a, b, counts, bounds, cover, stops};
  if (chunks > 1) jscorch_parallel_for(a->cf, pass_walk, &t, units, chunks);
  else pass_walk(&t, 0, 1);
  if (PASS_N) {
    /* entries no chunk wrote are padding: fill the gaps between the chunks' ranges */
    idx_t* out_crd[PASS_N + 1];
    for (int i = 0; i < PASS_N; ++i) out_crd[i] = (idx_t*)a->out[1 + i] + b * PASS_NSE;
    for (int64_t c = 1; c < chunks; ++c)          /* (insertion sort by range start) */
      for (int64_t d = c; d > 0 && cover[2 * d] < cover[2 * d - 2]; --d) {
        int64_t l = cover[2 * d], h = cover[2 * d + 1];
        cover[2 * d] = cover[2 * d - 2]; cover[2 * d + 1] = cover[2 * d - 1];
        cover[2 * d - 2] = l; cover[2 * d - 1] = h;
      }
    int64_t done = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      if (cover[2 * c] > done) pass_pad(out_crd, done, cover[2 * c]);
      if (cover[2 * c + 1] > done) done = cover[2 * c + 1];
    }
    if (done < PASS_NSE) pass_pad(out_crd, done, PASS_NSE);
  }
  idx_t* pos = (idx_t*)a->out[POS_RET] + b * (PASS_PCAP + 1);
  int64_t run = 0;
  pos[0] = 0;
  for (int64_t v = 0; v < PASS_PCAP; ++v) {
    for (int64_t c = 0; c < chunks; ++c) run += counts[c * PASS_STRIDE + v];
    pos[v + 1] = (idx_t)(run < PASS_NSE ? run : PASS_NSE);
  }
  return 0;
}
"""

BUCKET_SORT = r"""
static const int BUCKET_KEY[] = KEYS;

/* Compares two rows by the keys after the most significant one (most significant first). */
static inline int row_less(const idx_t* x, const idx_t* y) {
  for (int s = N_KEYS - 1; s >= 0; --s) {
    int k = BUCKET_KEY[s];
    if (x[k] != y[k]) return x[k] < y[k];
  }
  return 0;
}

/* Stable sort of rows co2[lo..hi) (with their entries ord[lo..hi)) by row_less: insertion
   sort for short buckets, else a merge sort of local indices and one permutation. */
static void bucket_sort(idx_t* co2, ord_t* ord, int64_t lo, int64_t hi, ord_t* idx, ord_t* aux,
                        idx_t* rtmp) {
  const int W = WIDTH;
  int64_t k = hi - lo;
  if (k <= 24) {
    for (int64_t i = lo + 1; i < hi; ++i) {
      idx_t r[WIDTH];
      for (int c = 0; c < W; ++c) r[c] = co2[i * W + c];
      ord_t e = ord[i];
      int64_t j = i;
      while (j > lo && row_less(r, co2 + (j - 1) * W)) {
        for (int c = 0; c < W; ++c) co2[j * W + c] = co2[(j - 1) * W + c];
        ord[j] = ord[j - 1];
        --j;
      }
      for (int c = 0; c < W; ++c) co2[j * W + c] = r[c];
      ord[j] = e;
    }
    return;
  }
  ord_t* a = idx + lo;
  ord_t* t = aux + lo;
  for (int64_t i = 0; i < k; ++i) a[i] = (ord_t)i;
  for (int64_t width = 1; width < k; width *= 2) {
    for (int64_t start = 0; start < k; start += 2 * width) {
      int64_t mid = start + width < k ? start + width : k;
      int64_t end = start + 2 * width < k ? start + 2 * width : k;
      int64_t p = start, q = mid, w = start;
      while (p < mid && q < end)
        t[w++] = row_less(co2 + (lo + a[q]) * W, co2 + (lo + a[p]) * W) ? a[q++] : a[p++];
      while (p < mid) t[w++] = a[p++];
      while (q < end) t[w++] = a[q++];
    }
    ord_t* swap = a; a = t; t = swap;
  }
  /* a holds the sorted local order; t is free: permute entries and rows */
  for (int64_t i = 0; i < k; ++i) {
    t[i] = ord[lo + a[i]];
    for (int c = 0; c < W; ++c) rtmp[(lo + i) * W + c] = co2[(lo + a[i]) * W + c];
  }
  for (int64_t i = 0; i < k; ++i) {
    ord[lo + i] = t[i];
    for (int c = 0; c < W; ++c) co2[(lo + i) * W + c] = rtmp[(lo + i) * W + c];
  }
}
"""

RADIX = r"""
/* Stable sort of ord[0..m) by co[ord[i] * W + k] in [0, size): one counting pass when
   the histogram is small, else 16-bit radix digits (least significant first). */
static void sort_by(const idx_t* co, int k, int64_t size, int64_t m, ord_t** ord, ord_t** tmp,
                    int64_t* hist, int64_t hist_cap) {
  const int W = WIDTH;
  int radix = size > hist_cap;
  int64_t buckets = radix ? ((int64_t)1 << 16) : size, mask = buckets - 1, bits = 0;
  while (radix && ((int64_t)1 << bits) < size) ++bits;
  for (int64_t shift = 0; shift == 0 || shift < bits; shift += 16) {
    ord_t* o = *ord;
    ord_t* t = *tmp;
    memset(hist, 0, sizeof(int64_t) * (buckets + 1));
    if (radix) {
      for (int64_t i = 0; i < m; ++i) hist[((co[(int64_t)o[i] * W + k] >> shift) & mask) + 1]++;
      for (int64_t v = 0; v < buckets; ++v) hist[v + 1] += hist[v];
      for (int64_t i = 0; i < m; ++i) {
        ord_t e = o[i];
        t[hist[(co[(int64_t)e * W + k] >> shift) & mask]++] = e;
      }
    } else {
      for (int64_t i = 0; i < m; ++i) hist[co[(int64_t)o[i] * W + k] + 1]++;
      for (int64_t v = 0; v < buckets; ++v) hist[v + 1] += hist[v];
      for (int64_t i = 0; i < m; ++i) { ord_t e = o[i]; t[hist[co[(int64_t)e * W + k]]++] = e; }
    }
    *ord = t;
    *tmp = o;
  }
}
"""

BATCH = r"""
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
"""
