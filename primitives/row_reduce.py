"""Segment reductions broadcast back to the stored entries, for contiguous segments.

``row_reduce(pos, values, op)``: the stored entries ``pos[r] <= q < pos[r + 1]`` form
segment ``r`` (a CSR row, a CSF fibre: the leaves of one position of the parent level);
every entry gets the maximum (``op="max"``) or the sum (``op="sum"``) of its segment's
values, block element by block element; entries outside every segment (padding) get 0.
This is the work of a softmax over stored entries (:func:`softmax`): a row maximum, a
row sum, each read back at the entries.

``jscorch_row_reduce`` is a primitive: on CPU its lowering is a generated C kernel
(rows split over XLA's thread pool by stored entries, each row reduced and written in
one pass, ``pos`` clamped to the buffer so no input reads or writes out of bounds),
elsewhere, without a compiler or for other dtypes a portable composition (segment ids
by ``searchsorted``, ``segment_max`` / ``segment_sum``, a gather). ``"sum"`` is linear
and self-adjoint (its transpose is itself), so it differentiates to any order in both
modes; ``"max"`` is used as a constant shift (its tangent is zero).

Example:
  >>> import jax.numpy as jnp
  >>> pos = jnp.array([0, 2, 2, 3])                 # rows {0, 1}, {}, {2}; one padding slot
  >>> row_reduce(pos, jnp.array([1., 3., 5., 7.]), "sum")
  Array([4., 4., 5., 0.], dtype=float32)
  >>> softmax(pos, jnp.array([0., 0., 5., 7.]))
  Array([0.5, 0.5, 1. , 0. ], dtype=float32)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from . import kernel_build
from .c_runtime import RUNTIME
from .settings import settings

OPS = ("max", "sum")
_VAL_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_IDX_CTYPE = {np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t"}
#: Stored entries below which a call runs on one thread.
SERIAL_ENTRIES = 1 << 15

row_reduce_p = Primitive("jscorch_row_reduce")


def row_reduce(pos: jax.Array, values: jax.Array, op: str) -> jax.Array:
  """Each stored entry's segment maximum or sum (see the module).

  Args:
    pos: `[*batch, rows + 1]` integer segment boundaries (non-decreasing).
    values: `[*batch, nse, *block]` float32 / float64 values.
    op: ``"max"`` or ``"sum"``.

  Returns:
    `[*batch, nse, *block]`, like ``values``; 0 outside every segment.
  """
  if op not in OPS:
    raise ValueError(f"row_reduce: op must be one of {OPS}; got {op!r}.")
  if pos.ndim < 1 or values.ndim < pos.ndim or values.shape[:pos.ndim - 1] != pos.shape[:-1]:
    raise ValueError(f"row_reduce: pos [*batch, rows + 1] and values [*batch, nse, *block] "
                     f"must share the batch shape; got pos {pos.shape}, values {values.shape}.")
  return row_reduce_p.bind(pos, values, op=op)


def softmax(pos: jax.Array, values: jax.Array) -> jax.Array:
  """Softmax within each segment of :func:`row_reduce` (0 outside every segment).

  The segment maximum, held constant for differentiation, is subtracted first; a
  segment whose values are all ``-inf`` gives NaN, as ``jax.nn.softmax`` does.
  """
  top = jax.lax.stop_gradient(row_reduce(pos, values, "max"))
  e = jnp.exp(values - jnp.where(top == -jnp.inf, 0, top))   # +inf kept: NaN, as jnp
  inside = _inside(pos, values)
  e = jnp.where(inside, e, 0)
  return e / jnp.where(inside, row_reduce(pos, e, "sum"), 1)


def _inside(pos, values):
  """`[*batch, nse, 1...]` bool: entries within ``[pos[0], pos[-1])``."""
  q = jnp.arange(values.shape[pos.ndim - 1])
  inside = (q >= pos[..., :1]) & (q < pos[..., -1:])
  return inside.reshape(inside.shape + (1,) * (values.ndim - pos.ndim))


# -- portable composition --------------------------------------------------------------------
def _portable_one(pos, values, op):
  rows, nse = pos.shape[0] - 1, values.shape[0]
  q = jnp.arange(nse, dtype=pos.dtype)
  seg = jnp.searchsorted(pos, q, side="right") - 1        # the last row starting at or before q
  inside = (q >= pos[0]) & (q < pos[-1])
  ids = jnp.where(inside, seg, rows)                       # rows: dropped
  reduce = jax.ops.segment_max if op == "max" else jax.ops.segment_sum
  per_row = reduce(values, ids, num_segments=rows)
  out = per_row.at[ids].get(mode="fill", fill_value=0)
  return jnp.where(inside.reshape((nse,) + (1,) * (values.ndim - 1)), out, 0)


def _portable(pos, values, *, op):
  fn = functools.partial(_portable_one, op=op)
  for _ in range(pos.ndim - 1):
    fn = jax.vmap(fn)
  return fn(pos, values)


# -- rules -----------------------------------------------------------------------------------
def _impl(pos, values, *, op):
  return jax.jit(functools.partial(row_reduce_p.bind, op=op))(pos, values)


def _abstract_eval(pos, values, *, op):
  del pos, op
  return jax.core.ShapedArray(values.shape, values.dtype)


def _jvp(primals, tangents, *, op):
  pos, values = primals
  out = row_reduce_p.bind(pos, values, op=op)
  if op == "max" or type(tangents[1]) is ad.Zero:
    return out, ad.Zero(jax.typeof(out).to_tangent_aval())
  return out, row_reduce_p.bind(pos, tangents[1], op=op)


def _transpose(ct, pos, values, *, op):
  assert op == "sum" and ad.is_undefined_primal(values) and not ad.is_undefined_primal(pos)
  if type(ct) is ad.Zero:
    return None, ad.Zero(values.aval)
  return None, row_reduce_p.bind(pos, ct, op=op)


def _batching_rule(args, dims, *, op):
  size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  pos, values = (jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
                 for a, d in zip(args, dims))
  return row_reduce_p.bind(pos, values, op=op), 0


def _portable_lowering(ctx, pos, values, *, op):
  return mlir.lower_fun(functools.partial(_portable, op=op), multiple_results=False)(
      ctx, pos, values)


# -- the kernel ------------------------------------------------------------------------------
_BODY = r"""
typedef struct {
  const idx_t* pos;
  const val_t* in;
  val_t* out;
  int64_t nse, blk;
} rr_args;

static inline int64_t clamp_pos(const rr_args* a, int64_t r) {
  int64_t p = (int64_t)a->pos[r];
  return p < 0 ? 0 : (p > a->nse ? a->nse : p);
}

static int64_t work_before(const void* v, int64_t r) {
  return clamp_pos((const rr_args*)v, r);
}

static void rows(const void* v, int64_t lo, int64_t hi) {
  const rr_args* a = (const rr_args*)v;
  const int64_t blk = a->blk;
  val_t small[64];
  val_t* acc = blk <= 64 ? small : (val_t*)malloc(sizeof(val_t) * blk);
  if (!acc) return;
  for (int64_t r = lo; r < hi; ++r) {
    int64_t s = clamp_pos(a, r), e = clamp_pos(a, r + 1);
    if (e <= s) continue;
    for (int64_t k = 0; k < blk; ++k) acc[k] = a->in[s * blk + k];
    for (int64_t q = s + 1; q < e; ++q) {
      const val_t* x = a->in + q * blk;
      for (int64_t k = 0; k < blk; ++k) acc[k] = COMBINE(acc[k], x[k]);
    }
    for (int64_t q = s; q < e; ++q) {
      val_t* y = a->out + q * blk;
      for (int64_t k = 0; k < blk; ++k) y[k] = acc[k];
    }
  }
  if (acc != small) free(acc);
}
"""

_HANDLER = r"""
XLA_FFI_Error* NAME(XLA_FFI_CallFrame* cf) {
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  if (cf->args.size != 2 || cf->rets.size != 1)
    return jscorch_error(cf, "NAME: wrong number of buffers");
  const XLA_FFI_Buffer* p = (const XLA_FFI_Buffer*)cf->args.args[0];
  const XLA_FFI_Buffer* v = (const XLA_FFI_Buffer*)cf->args.args[1];
  if (p->rank < 1 || v->rank < p->rank) return jscorch_error(cf, "NAME: bad ranks");
  int64_t batch = 1, blk = 1;
  for (int64_t d = 0; d + 1 < p->rank; ++d) {
    if (p->dims[d] != v->dims[d]) return jscorch_error(cf, "NAME: batch shapes differ");
    batch *= p->dims[d];
  }
  for (int64_t d = p->rank; d < v->rank; ++d) blk *= v->dims[d];
  const int64_t n_rows = p->dims[p->rank - 1] - 1, nse = v->dims[p->rank - 1];
  if (n_rows < 0) return jscorch_error(cf, "NAME: pos needs rows + 1 entries");
  int64_t n_chunks = 4 * jscorch_num_threads(cf);
  int64_t* bounds = (int64_t*)malloc(sizeof(int64_t) * (n_chunks + 1));
  if (!bounds) return jscorch_error(cf, "NAME: out of memory");
  for (int64_t b = 0; b < batch; ++b) {
    rr_args a = {(const idx_t*)jscorch_arg(cf, 0) + b * (n_rows + 1),
                 (const val_t*)jscorch_arg(cf, 1) + b * nse * blk,
                 (val_t*)jscorch_ret(cf, 0) + b * nse * blk, nse, blk};
    int64_t first = clamp_pos(&a, 0), last = n_rows > 0 ? clamp_pos(&a, n_rows) : first;
    if (last < first) last = first;
    memset(a.out, 0, sizeof(val_t) * first * blk);                   /* padding: 0 */
    memset(a.out + last * blk, 0, sizeof(val_t) * (nse - last) * blk);
    int64_t chunks = (last - first) * blk < SERIAL ? 1 : n_chunks;
    chunks = jscorch_split(n_rows, work_before, &a, chunks, bounds);
    jscorch_parallel_for(cf, rows, &a, bounds, chunks);
  }
  free(bounds);
  return NULL;
}
"""


def kernel_source(op: str, idx_dtype, val_dtype) -> tuple[str, str]:
  """``(target name, C source)`` of the kernel for ``op`` and the two dtypes."""
  idx_t, val_t = _IDX_CTYPE[np.dtype(idx_dtype)], _VAL_CTYPE[np.dtype(val_dtype)]
  name = f"jscorch_row_{op}_{idx_t[:-2]}_{val_t}"
  combine = "((x) > (y) ? (x) : (y))" if op == "max" else "((x) + (y))"
  header = "\n".join([f"typedef {idx_t} idx_t;", f"typedef {val_t} val_t;",
                      f"#define COMBINE(x, y) {combine}", f"#define SERIAL {SERIAL_ENTRIES}LL"])
  return name, "\n".join([RUNTIME, header, _BODY, _HANDLER.replace("NAME", name)])


def kernel_applies(idx_dtype, val_dtype) -> bool:
  """Whether a kernel exists for these dtypes and can be built here."""
  return (settings.lowering != "portable" and np.dtype(idx_dtype) in _IDX_CTYPE
          and np.dtype(val_dtype) in _VAL_CTYPE and kernel_build.compiler() is not None)


def _cpu_lowering(ctx, pos, values, *, op):
  pos_aval, val_aval = ctx.avals_in
  if settings.lowering != "portable" and kernel_build.compiler() is None:
    kernel_build.warn_no_compiler()
  if not kernel_applies(pos_aval.dtype, val_aval.dtype) or val_aval.size == 0:
    return _portable_lowering(ctx, pos, values, op=op)
  name = kernel_build.ensure_registered(*kernel_source(op, pos_aval.dtype, val_aval.dtype))
  return jax.ffi.ffi_lowering(name)(ctx, pos, values)


row_reduce_p.def_impl(_impl)
row_reduce_p.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[row_reduce_p] = _jvp
ad.primitive_transposes[row_reduce_p] = _transpose
batching.primitive_batchers[row_reduce_p] = _batching_rule
mlir.register_lowering(row_reduce_p, _portable_lowering)
mlir.register_lowering(row_reduce_p, _cpu_lowering, platform="cpu")
