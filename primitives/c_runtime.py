"""The fixed C runtime every generated kernel is compiled with.

It handles the typed XLA FFI protocol from plain C (metadata query, stage and
version checks, argument access, errors) and provides ``jscorch_parallel_for``:
chunks of work run on XLA's intra-op thread pool (no OpenMP). The calling thread
claims chunks too, so it never waits idle on a busy pool; the job is reference
counted so late-starting pool tasks never touch freed memory.
"""

RUNTIME = r"""
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include "xla/ffi/api/c_api.h"

typedef void (*jscorch_body_fn)(const void* args, int64_t lo, int64_t hi);

typedef struct {
  jscorch_body_fn body;
  const void* args;
  int64_t n_chunks;
  _Atomic int64_t next;
  _Atomic int64_t done;
  _Atomic int32_t refs;
  int64_t bounds[];        /* n_chunks + 1 unit boundaries */
} jscorch_job;

static void jscorch_run_chunks(jscorch_job* job) {
  for (;;) {
    int64_t c = atomic_fetch_add(&job->next, 1);
    if (c >= job->n_chunks) break;
    job->body(job->args, job->bounds[c], job->bounds[c + 1]);
    atomic_fetch_add(&job->done, 1);
  }
}

static void jscorch_release(jscorch_job* job) {
  if (atomic_fetch_sub(&job->refs, 1) == 1) free(job);
}

static void jscorch_task(void* data) {
  jscorch_job* job = (jscorch_job*)data;
  jscorch_run_chunks(job);
  jscorch_release(job);
}

static int64_t jscorch_num_threads(XLA_FFI_CallFrame* cf) {
  XLA_FFI_ThreadPool_NumThreads_Args a;
  int64_t n = 1;
  memset(&a, 0, sizeof(a));
  a.struct_size = XLA_FFI_ThreadPool_NumThreads_Args_STRUCT_SIZE;
  a.ctx = cf->ctx;
  a.num_threads = &n;
  XLA_FFI_Error* err = cf->api->XLA_FFI_ThreadPool_NumThreads(&a);
  if (err) {
    XLA_FFI_Error_Destroy_Args d;
    memset(&d, 0, sizeof(d));
    d.struct_size = XLA_FFI_Error_Destroy_Args_STRUCT_SIZE;
    d.error = err;
    cf->api->XLA_FFI_Error_Destroy(&d);
    return 1;
  }
  return n < 1 ? 1 : n;
}

/* Runs body over [0, n_units) split at `bounds` (n_chunks + 1 monotone values). */
static void jscorch_parallel_for(XLA_FFI_CallFrame* cf, jscorch_body_fn body, const void* args,
                                 const int64_t* bounds, int64_t n_chunks) {
  int64_t n_threads = jscorch_num_threads(cf);
  if (n_chunks <= 1 || n_threads <= 1) {
    for (int64_t c = 0; c < n_chunks; ++c) body(args, bounds[c], bounds[c + 1]);
    return;
  }
  jscorch_job* job = (jscorch_job*)malloc(sizeof(jscorch_job) + sizeof(int64_t) * (n_chunks + 1));
  if (!job) {
    for (int64_t c = 0; c < n_chunks; ++c) body(args, bounds[c], bounds[c + 1]);
    return;
  }
  job->body = body;
  job->args = args;
  job->n_chunks = n_chunks;
  memcpy(job->bounds, bounds, sizeof(int64_t) * (n_chunks + 1));
  atomic_init(&job->next, 0);
  atomic_init(&job->done, 0);
  int64_t helpers = (n_threads < n_chunks ? n_threads : n_chunks) - 1;
  atomic_init(&job->refs, (int32_t)(1 + helpers));
  for (int64_t t = 0; t < helpers; ++t) {
    XLA_FFI_ThreadPool_Schedule_Args s;
    memset(&s, 0, sizeof(s));
    s.struct_size = XLA_FFI_ThreadPool_Schedule_Args_STRUCT_SIZE;
    s.ctx = cf->ctx;
    s.task = jscorch_task;
    s.data = job;
    XLA_FFI_Error* err = cf->api->XLA_FFI_ThreadPool_Schedule(&s);
    if (err) {
      XLA_FFI_Error_Destroy_Args d;
      memset(&d, 0, sizeof(d));
      d.struct_size = XLA_FFI_Error_Destroy_Args_STRUCT_SIZE;
      d.error = err;
      cf->api->XLA_FFI_Error_Destroy(&d);
      jscorch_release(job);
    }
  }
  jscorch_run_chunks(job);
  while (atomic_load(&job->done) < n_chunks) sched_yield();
  jscorch_release(job);
}

/* Chunk boundaries over units [0, n_units) with about equal work, given a monotone
   prefix of work per unit (work_before(u) = work of units < u). */
static int64_t jscorch_split(int64_t n_units, int64_t (*work_before)(const void*, int64_t),
                             const void* args, int64_t n_chunks, int64_t* bounds) {
  if (n_chunks > n_units) n_chunks = n_units > 0 ? n_units : 1;
  int64_t total = work_before(args, n_units);
  bounds[0] = 0;
  for (int64_t c = 1; c < n_chunks; ++c) {
    int64_t goal = total / n_chunks * c, lo = bounds[c - 1], hi = n_units;
    while (lo < hi) {
      int64_t mid = lo + (hi - lo) / 2;
      if (work_before(args, mid) < goal) lo = mid + 1; else hi = mid;
    }
    bounds[c] = lo;
  }
  bounds[n_chunks] = n_units;
  return n_chunks;
}

static XLA_FFI_Error* jscorch_error(XLA_FFI_CallFrame* cf, const char* msg) {
  XLA_FFI_Error_Create_Args e;
  memset(&e, 0, sizeof(e));
  e.struct_size = XLA_FFI_Error_Create_Args_STRUCT_SIZE;
  e.message = msg;
  e.errc = XLA_FFI_Error_Code_INVALID_ARGUMENT;
  return cf->api->XLA_FFI_Error_Create(&e);
}

/* Handles the metadata query and non-execute stages; returns 1 when the caller must return. */
static int jscorch_preamble(XLA_FFI_CallFrame* cf, XLA_FFI_Error** result) {
  *result = NULL;
  if (cf->extension_start && cf->extension_start->type == XLA_FFI_Extension_Metadata) {
    XLA_FFI_Metadata_Extension* ext = (XLA_FFI_Metadata_Extension*)cf->extension_start;
    ext->metadata->api_version.major_version = XLA_FFI_API_MAJOR;
    ext->metadata->api_version.minor_version = XLA_FFI_API_MINOR;
    ext->metadata->traits = 0;
    return 1;
  }
  if (cf->stage != XLA_FFI_ExecutionStage_EXECUTE) return 1;
  return 0;
}

static inline void* jscorch_arg(XLA_FFI_CallFrame* cf, int64_t i) {
  return ((XLA_FFI_Buffer*)cf->args.args[i])->data;
}

static inline void* jscorch_ret(XLA_FFI_CallFrame* cf, int64_t i) {
  return ((XLA_FFI_Buffer*)cf->rets.rets[i])->data;
}
"""
