/* jscorch structure kernel jscorch_s_NAME
 *   union   : 2 parts, sorted row segments merged in order (dest and src)
 *   passes  : count per row, prefix sum, fill; parallel over rows
 *   sizes   : read at run time (buffers' dims, the params operand) */
/* (c_runtime.RUNTIME) */
/* (assembly._HELPERS) */

typedef int32_t idx_t;
typedef int32_t cnt_t;
typedef float val_t;

typedef struct {
  int64_t rows, nse, cols, blk, rows_0, cap_0, cols_0, row_off_0, col_off_0, rows_1, cap_1, cols_1, row_off_1, col_off_1;
  /* this batch element's buffers */
  const idx_t* pos_0;
  const idx_t* crd_0;
  const idx_t* pos_1;
  const idx_t* crd_1;
  idx_t* out_pos;
  idx_t* out_crd;
  idx_t* dest;
  cnt_t* count;
  idx_t* src_0;
  idx_t* src_1;
  int64_t* start;
} args_t;

static void pass_1(const void* a_, int64_t lo, int64_t hi) {
  const args_t* a = (const args_t*)a_;
  const int64_t cap_0 = a->cap_0, cap_1 = a->cap_1, col_off_0 = a->col_off_0, col_off_1 = a->col_off_1, cols = a->cols, cols_0 = a->cols_0, cols_1 = a->cols_1, row_off_0 = a->row_off_0, row_off_1 = a->row_off_1, rows = a->rows, rows_0 = a->rows_0, rows_1 = a->rows_1;
  const idx_t* crd_0 = a->crd_0;
  const idx_t* crd_1 = a->crd_1;
  const idx_t* pos_0 = a->pos_0;
  const idx_t* pos_1 = a->pos_1;
  int64_t* start = a->start;
  uint64_t* bits = cols <= 4194304LL ? (uint64_t*)calloc(cols / 64 + 1, sizeof(uint64_t)) : NULL;
  const uint64_t top = (uint64_t)cols;
  if (bits) {
    for (int64_t r = lo; r < hi; ++r) {
      int64_t p0 = 0, e0 = 0;
      {
        const int64_t row = r - row_off_0;
        if (row >= 0 && row < rows_0) {
          p0 = pos_0[row]; e0 = pos_0[row + 1];
          if (p0 < 0) p0 = 0;
          if (e0 > cap_0) e0 = cap_0;
          if (e0 < p0) e0 = p0;
        }
      }
      while (p0 < e0 && crd_0[p0] < 0) { ++p0; }
      while (e0 > p0 && crd_0[e0 - 1] >= cols_0) { --e0; }
      int64_t p1 = 0, e1 = 0;
      {
        const int64_t row = r - row_off_1;
        if (row >= 0 && row < rows_1) {
          p1 = pos_1[row]; e1 = pos_1[row + 1];
          if (p1 < 0) p1 = 0;
          if (e1 > cap_1) e1 = cap_1;
          if (e1 < p1) e1 = p1;
        }
      }
      while (p1 < e1 && crd_1[p1] < 0) { ++p1; }
      while (e1 > p1 && crd_1[e1 - 1] >= cols_1) { --e1; }
      int64_t hits = 0;
      for (int64_t p = p0; p < e0; ++p) {
        uint64_t c = (uint64_t)((int64_t)crd_0[p] + col_off_0);
        c = c < top ? c : top;
        bits[c >> 6] |= 1ull << (c & 63);
      }
      for (int64_t p = p1; p < e1; ++p) {
        uint64_t c = (uint64_t)((int64_t)crd_1[p] + col_off_1);
        c = c < top ? c : top;
        hits += (int64_t)((bits[c >> 6] >> (c & 63)) & 1);
      }
      for (int64_t p = p0; p < e0; ++p) {
        uint64_t c = (uint64_t)((int64_t)crd_0[p] + col_off_0);
        c = c < top ? c : top;
        bits[c >> 6] = 0;
      }
      const int64_t n = (e0 - p0) + (e1 - p1) - hits;
      start[r + 1] = n;
    }
  } else {
    for (int64_t r = lo; r < hi; ++r) {
      int64_t p0 = 0, e0 = 0;
      {
        const int64_t row = r - row_off_0;
        if (row >= 0 && row < rows_0) {
          p0 = pos_0[row]; e0 = pos_0[row + 1];
          if (p0 < 0) p0 = 0;
          if (e0 > cap_0) e0 = cap_0;
          if (e0 < p0) e0 = p0;
        }
      }
      while (p0 < e0 && crd_0[p0] < 0) { ++p0; }
      while (e0 > p0 && crd_0[e0 - 1] >= cols_0) { --e0; }
      int64_t p1 = 0, e1 = 0;
      {
        const int64_t row = r - row_off_1;
        if (row >= 0 && row < rows_1) {
          p1 = pos_1[row]; e1 = pos_1[row + 1];
          if (p1 < 0) p1 = 0;
          if (e1 > cap_1) e1 = cap_1;
          if (e1 < p1) e1 = p1;
        }
      }
      while (p1 < e1 && crd_1[p1] < 0) { ++p1; }
      while (e1 > p1 && crd_1[e1 - 1] >= cols_1) { --e1; }
      int64_t n = 0;
      while (p0 < e0 && p1 < e1) {
        const int64_t x = (int64_t)crd_0[p0] + col_off_0, y = (int64_t)crd_1[p1] + col_off_1;
        p0 += x <= y; p1 += y <= x; ++n;
      }
      n += (e0 - p0) + (e1 - p1);
      start[r + 1] = n;
    }
  }
  free(bits);
}

static int64_t work_1(const void* a_, int64_t u) {
  const args_t* a = (const args_t*)a_;
  const int64_t cap_0 = a->cap_0, cap_1 = a->cap_1, col_off_0 = a->col_off_0, col_off_1 = a->col_off_1, cols_0 = a->cols_0, cols_1 = a->cols_1, row_off_0 = a->row_off_0, row_off_1 = a->row_off_1, rows_0 = a->rows_0, rows_1 = a->rows_1;
  const idx_t* crd_0 = a->crd_0;
  const idx_t* crd_1 = a->crd_1;
  const idx_t* pos_0 = a->pos_0;
  const idx_t* pos_1 = a->pos_1;
  int64_t w = u;
  {
    int64_t row = u - row_off_0;
    row = row < 0 ? 0 : (row > rows_0 ? rows_0 : row);
    const int64_t v = pos_0[row];
    w += v < 0 ? 0 : (v > cap_0 ? cap_0 : v);
  }
  {
    int64_t row = u - row_off_1;
    row = row < 0 ? 0 : (row > rows_1 ? rows_1 : row);
    const int64_t v = pos_1[row];
    w += v < 0 ? 0 : (v > cap_1 ? cap_1 : v);
  }
  return w;
}

static inline void merge_2(const args_t* a_, int64_t p0, int64_t e0, int64_t p1, int64_t e1, int64_t at, int checked) {
  const args_t* a = (const args_t*)a_;
  const int64_t cap_0 = a->cap_0, cap_1 = a->cap_1, col_off_0 = a->col_off_0, col_off_1 = a->col_off_1, cols_0 = a->cols_0, cols_1 = a->cols_1, nse = a->nse, row_off_0 = a->row_off_0, row_off_1 = a->row_off_1, rows_0 = a->rows_0, rows_1 = a->rows_1;
  const idx_t* crd_0 = a->crd_0;
  const idx_t* crd_1 = a->crd_1;
  idx_t* dest = a->dest;
  idx_t* out_crd = a->out_crd;
  const idx_t* pos_0 = a->pos_0;
  const idx_t* pos_1 = a->pos_1;
  idx_t* src_0 = a->src_0;
  idx_t* src_1 = a->src_1;
  int64_t* start = a->start;
  idx_t* d0 = dest + 0;
  idx_t* d1 = dest + cap_0;
  int64_t q = at;
  while (p0 < e0 && p1 < e1) {
    const int64_t x = (int64_t)crd_0[p0] + col_off_0, y = (int64_t)crd_1[p1] + col_off_1;
    const int64_t g0 = x > y, g1 = y > x;      /* part 0 (1) stores nothing here */
    d0[p0] = (idx_t)q;
    d1[p1] = (idx_t)q;
    if (!checked || q < nse) {
      out_crd[q] = (idx_t)(x - g0 * (x - y));
      src_0[q] = (idx_t)(p0 + g0 * (cap_0 - p0));
      src_1[q] = (idx_t)(p1 + g1 * (cap_1 - p1));
    }
    p0 += 1 - g0; p1 += 1 - g1; ++q;
  }
  for (; p0 < e0; ++p0, ++q) {
    d0[p0] = (idx_t)q;
    if (!checked || q < nse) {
      out_crd[q] = (idx_t)((int64_t)crd_0[p0] + col_off_0);
      src_0[q] = (idx_t)(p0);
      src_1[q] = (idx_t)(cap_1);
    }
  }
  for (; p1 < e1; ++p1, ++q) {
    d1[p1] = (idx_t)q;
    if (!checked || q < nse) {
      out_crd[q] = (idx_t)((int64_t)crd_1[p1] + col_off_1);
      src_0[q] = (idx_t)(cap_0);
      src_1[q] = (idx_t)(p1);
    }
  }
}

static void pass_2(const void* a_, int64_t lo, int64_t hi) {
  const args_t* a = (const args_t*)a_;
  const int64_t cap_0 = a->cap_0, cap_1 = a->cap_1, col_off_0 = a->col_off_0, col_off_1 = a->col_off_1, cols_0 = a->cols_0, cols_1 = a->cols_1, nse = a->nse, row_off_0 = a->row_off_0, row_off_1 = a->row_off_1, rows = a->rows, rows_0 = a->rows_0, rows_1 = a->rows_1;
  const idx_t* crd_0 = a->crd_0;
  const idx_t* crd_1 = a->crd_1;
  idx_t* dest = a->dest;
  idx_t* out_crd = a->out_crd;
  const idx_t* pos_0 = a->pos_0;
  const idx_t* pos_1 = a->pos_1;
  idx_t* src_0 = a->src_0;
  idx_t* src_1 = a->src_1;
  int64_t* start = a->start;
  idx_t* d0 = dest + 0;
  idx_t* d1 = dest + cap_0;
  for (int64_t r = lo; r < hi; ++r) {
    int64_t p0 = 0, e0 = 0;
    {
      const int64_t row = r - row_off_0;
      if (row >= 0 && row < rows_0) {
        p0 = pos_0[row]; e0 = pos_0[row + 1];
        if (p0 < 0) p0 = 0;
        if (e0 > cap_0) e0 = cap_0;
        if (e0 < p0) e0 = p0;
      }
    }
    while (p0 < e0 && crd_0[p0] < 0) { d0[p0] = (idx_t)nse; ++p0; }
    while (e0 > p0 && crd_0[e0 - 1] >= cols_0) { d0[e0 - 1] = (idx_t)nse; --e0; }
    int64_t p1 = 0, e1 = 0;
    {
      const int64_t row = r - row_off_1;
      if (row >= 0 && row < rows_1) {
        p1 = pos_1[row]; e1 = pos_1[row + 1];
        if (p1 < 0) p1 = 0;
        if (e1 > cap_1) e1 = cap_1;
        if (e1 < p1) e1 = p1;
      }
    }
    while (p1 < e1 && crd_1[p1] < 0) { d1[p1] = (idx_t)nse; ++p1; }
    while (e1 > p1 && crd_1[e1 - 1] >= cols_1) { d1[e1 - 1] = (idx_t)nse; --e1; }
    const int64_t at = start[r];
    if (at + (e0 - p0) + (e1 - p1) <= nse) merge_2(a, p0, e0, p1, e1, at, 0);
    else merge_2(a, p0, e0, p1, e1, at, 1);
  }
}

static int64_t work_2(const void* a_, int64_t u) {
  const args_t* a = (const args_t*)a_;
  const int64_t cap_0 = a->cap_0, cap_1 = a->cap_1, col_off_0 = a->col_off_0, col_off_1 = a->col_off_1, cols_0 = a->cols_0, cols_1 = a->cols_1, row_off_0 = a->row_off_0, row_off_1 = a->row_off_1, rows_0 = a->rows_0, rows_1 = a->rows_1;
  const idx_t* crd_0 = a->crd_0;
  const idx_t* crd_1 = a->crd_1;
  const idx_t* pos_0 = a->pos_0;
  const idx_t* pos_1 = a->pos_1;
  int64_t w = u;
  {
    int64_t row = u - row_off_0;
    row = row < 0 ? 0 : (row > rows_0 ? rows_0 : row);
    const int64_t v = pos_0[row];
    w += v < 0 ? 0 : (v > cap_0 ? cap_0 : v);
  }
  {
    int64_t row = u - row_off_1;
    row = row < 0 ? 0 : (row > rows_1 ? rows_1 : row);
    const int64_t v = pos_1[row];
    w += v < 0 ? 0 : (v > cap_1 ? cap_1 : v);
  }
  return w;
}

XLA_FFI_Error* jscorch_s_NAME(XLA_FFI_CallFrame* cf) {
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  if (cf->args.size != 5 || cf->rets.size != 6)
    return jscorch_error(cf, "jscorch_s_NAME: wrong number of buffers");
  const XLA_FFI_Buffer* prm = arg_buf(cf, 4);
  if (prm->dtype != XLA_FFI_DataType_S64 || prm->rank != 1 || prm->dims[0] != 8)
    return jscorch_error(cf, "jscorch_s_NAME: params must be int64 [8]");
  const int64_t* params = (const int64_t*)prm->data;
  args_t args;
  args_t* a = &args;
  a->rows = last_dim(ret_buf(cf, 0)) + -1;
  a->nse = last_dim(ret_buf(cf, 1));
  a->cols = params[0];
  a->blk = params[7];
  a->rows_0 = last_dim(arg_buf(cf, 0)) + -1;
  a->cap_0 = last_dim(arg_buf(cf, 1));
  a->cols_0 = params[1];
  a->row_off_0 = params[3];
  a->col_off_0 = params[5];
  a->rows_1 = last_dim(arg_buf(cf, 2)) + -1;
  a->cap_1 = last_dim(arg_buf(cf, 3));
  a->cols_1 = params[2];
  a->row_off_1 = params[4];
  a->col_off_1 = params[6];
  const int64_t blk = a->blk, cap_0 = a->cap_0, cap_1 = a->cap_1, col_off_0 = a->col_off_0, col_off_1 = a->col_off_1, cols = a->cols, cols_0 = a->cols_0, cols_1 = a->cols_1, nse = a->nse, row_off_0 = a->row_off_0, row_off_1 = a->row_off_1, rows = a->rows, rows_0 = a->rows_0, rows_1 = a->rows_1;
  const int64_t batch = lead_dims(ret_buf(cf, 1));
  if (rows < 0 || nse < 0 || cols < 0 || blk < 0 || rows_0 < 0 || cap_0 < 0 || cols_0 < 0 || row_off_0 < 0 || col_off_0 < 0 || rows_1 < 0 || cap_1 < 0 || cols_1 < 0 || row_off_1 < 0 || col_off_1 < 0)
    return jscorch_error(cf, "jscorch_s_NAME: negative sizes");
  if (elements(arg_buf(cf, 0)) != batch * (rows_0 + 1) ||
    elements(arg_buf(cf, 1)) != batch * (cap_0) ||
    elements(arg_buf(cf, 2)) != batch * (rows_1 + 1) ||
    elements(arg_buf(cf, 3)) != batch * (cap_1) ||
    elements(ret_buf(cf, 0)) != batch * (rows + 1) ||
    elements(ret_buf(cf, 1)) != batch * (nse) ||
    elements(ret_buf(cf, 2)) != batch * (cap_0 + cap_1) ||
    elements(ret_buf(cf, 3)) != batch * (1) ||
    elements(ret_buf(cf, 4)) != batch * (nse) ||
    elements(ret_buf(cf, 5)) != batch * (nse))
  return jscorch_error(cf, "jscorch_s_NAME: buffer shapes do not agree");
  int64_t* start = (int64_t*)malloc(sizeof(int64_t) * (rows + 1));
  int64_t n_chunks = 4 * jscorch_num_threads(cf);
  int64_t* bounds = (int64_t*)malloc(sizeof(int64_t) * (n_chunks + 1));
  if (!start || !bounds) {
    free(start); free(bounds);
    return jscorch_error(cf, "jscorch_s_NAME: out of memory");
  }
  a->start = start;
  for (int64_t b = 0; b < batch; ++b) {
    a->pos_0 = (const idx_t*)jscorch_arg(cf, 0) + b * (rows_0 + 1);
    a->crd_0 = (const idx_t*)jscorch_arg(cf, 1) + b * (cap_0);
    a->pos_1 = (const idx_t*)jscorch_arg(cf, 2) + b * (rows_1 + 1);
    a->crd_1 = (const idx_t*)jscorch_arg(cf, 3) + b * (cap_1);
    a->out_pos = (idx_t*)jscorch_ret(cf, 0) + b * (rows + 1);
    a->out_crd = (idx_t*)jscorch_ret(cf, 1) + b * (nse);
    a->dest = (idx_t*)jscorch_ret(cf, 2) + b * (cap_0 + cap_1);
    a->count = (cnt_t*)jscorch_ret(cf, 3) + b * (1);
    a->src_0 = (idx_t*)jscorch_ret(cf, 4) + b * (nse);
    a->src_1 = (idx_t*)jscorch_ret(cf, 5) + b * (nse);
    const idx_t* pos_0 = a->pos_0;
    const idx_t* crd_0 = a->crd_0;
    const idx_t* pos_1 = a->pos_1;
    const idx_t* crd_1 = a->crd_1;
    idx_t* out_pos = a->out_pos;
    idx_t* out_crd = a->out_crd;
    idx_t* dest = a->dest;
    cnt_t* count = a->count;
    idx_t* src_0 = a->src_0;
    idx_t* src_1 = a->src_1;
    {      /* entries outside every row go nowhere */
      int64_t s = pos_0[0]; s = s < 0 ? 0 : (s > cap_0 ? cap_0 : s);
      int64_t e = pos_0[rows_0]; e = e < s ? s : (e > cap_0 ? cap_0 : e);
      idx_t* d = dest + 0;
      for (int64_t q = 0; q < s; ++q) d[q] = (idx_t)nse;
      for (int64_t q = e; q < cap_0; ++q) d[q] = (idx_t)nse;
    }
    {      /* entries outside every row go nowhere */
      int64_t s = pos_1[0]; s = s < 0 ? 0 : (s > cap_1 ? cap_1 : s);
      int64_t e = pos_1[rows_1]; e = e < s ? s : (e > cap_1 ? cap_1 : e);
      idx_t* d = dest + cap_0;
      for (int64_t q = 0; q < s; ++q) d[q] = (idx_t)nse;
      for (int64_t q = e; q < cap_1; ++q) d[q] = (idx_t)nse;
    }
    {
      int64_t chunks = work_1(a, rows) < 32768 ? 1 : n_chunks;
      chunks = jscorch_split(rows, work_1, a, chunks, bounds);
      jscorch_parallel_for(cf, pass_1, a, bounds, chunks);
    }
    start[0] = 0;
    for (int64_t r = 0; r < rows; ++r) start[r + 1] += start[r];
    {
      int64_t chunks = work_2(a, rows) < 32768 ? 1 : n_chunks;
      chunks = jscorch_split(rows, work_2, a, chunks, bounds);
      jscorch_parallel_for(cf, pass_2, a, bounds, chunks);
    }
    for (int64_t r = 0; r <= rows; ++r) out_pos[r] = (idx_t)(start[r] < nse ? start[r] : nse);
    for (int64_t q = start[rows]; q < nse; ++q) {      /* padding leaves */
      out_crd[q] = (idx_t)cols;
      src_0[q] = (idx_t)(cap_0);
      src_1[q] = (idx_t)(cap_1);
    }
    count[0] = (cnt_t)start[rows];
  }
  free(start); free(bounds);
  return NULL;
}
