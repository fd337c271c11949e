"""Values moved to new slots: ``out[s] = values[slots[s]]``, 0 where a slot has no entry.

``take(values, slots)`` is how a conversion that keeps one entry per slot (CSR -> CSC,
COO -> CSR of unique coordinates, ...) moves its values once ``jscorch_structure`` has
computed, for every destination slot, the source entry it holds (``n`` for none).
Block dimensions after the entry dimension move with their entry.

``jscorch_take`` is a primitive because XLA's CPU gather of a whole value buffer costs
about as much as the counting sort before it: on CPU its lowering is a C kernel (slots
split over XLA's thread pool, the entry copied as raw bytes, so every dtype runs; a slot
outside ``[0, n)`` reads nothing and writes zeros), elsewhere, without a compiler or
under ``lowering="portable"`` a gather with ``mode="fill"``. It is linear in
``values``: its tangent is ``take`` of the tangent and its transpose a scatter-add
(``mode="drop"``), so it differentiates to any order in both modes.

Example:
  >>> import jax.numpy as jnp
  >>> take(jnp.array([[1., 2., 3.]]), jnp.array([[2, 0, 3]]))     # slot 2 holds nothing
  Array([[3., 1., 0.]], dtype=float32)
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from . import kernel_build
from .c_runtime import RUNTIME
from .settings import settings

_IDX_CTYPE = {np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t"}
#: Copied bytes below which a call runs on one thread.
SERIAL_BYTES = 1 << 18

take_p = Primitive("jscorch_take")


def take(values: jax.Array, slots: jax.Array) -> jax.Array:
  """The entry of each slot (see the module).

  Args:
    values: `[B, n, *block]`, any dtype.
    slots: `[B, m]` int32 / int64: the entry of each output slot; values outside
      ``[0, n)`` mark an empty slot.

  Returns:
    `[B, m, *block]`, ``values.dtype``; zeros at empty slots.
  """
  if values.ndim < 2 or slots.ndim != 2 or values.shape[0] != slots.shape[0]:
    raise ValueError(f"take: values [B, n, *block] and slots [B, m] must share B; got "
                     f"values {values.shape}, slots {slots.shape}.")
  if np.dtype(slots.dtype) not in _IDX_CTYPE:
    raise ValueError(f"take: slots must be int32 or int64; got {slots.dtype}.")
  return take_p.bind(values, slots)


def _in_range(slots, n):
  """``slots`` with every value outside ``[0, n)`` replaced by ``n`` (JAX indexing would
  wrap a negative one)."""
  return jnp.where((slots < 0) | (slots >= n), n, slots)


def _portable(values, slots):
  if values.shape[1] == 0:          # no entries to read (XLA cannot gather from an empty axis)
    return jnp.zeros(slots.shape + values.shape[2:], values.dtype)
  zero = np.zeros((), values.dtype)
  slots = _in_range(slots, values.shape[1])
  return jax.vmap(lambda v, s: v.at[s].get(mode="fill", fill_value=zero))(values, slots)


def _scatter_add(ct, slots, n):
  def one(c, s):
    return jnp.zeros((n,) + c.shape[1:], c.dtype).at[s].add(c, mode="drop")
  return jax.vmap(one)(ct, _in_range(slots, n))


# -- rules -----------------------------------------------------------------------------------
def _impl(values, slots):
  return jax.jit(take_p.bind)(values, slots)


def _abstract_eval(values, slots):
  return jax.core.ShapedArray(slots.shape + values.shape[2:], values.dtype)


def _jvp(primals, tangents):
  values, slots = primals
  out = take_p.bind(values, slots)
  if type(tangents[0]) is ad.Zero:
    return out, ad.Zero(jax.typeof(out).to_tangent_aval())
  return out, take_p.bind(tangents[0], slots)


def _transpose(ct, values, slots):
  assert ad.is_undefined_primal(values) and not ad.is_undefined_primal(slots)
  if type(ct) is ad.Zero:
    return ad.Zero(values.aval), None
  return _scatter_add(ct, slots, values.aval.shape[1]), None


def _batching_rule(args, dims):
  size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  values, slots = (jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
                   for a, d in zip(args, dims))
  # Explicit sizes: -1 cannot be inferred when another dimension (the capacity, say) is 0.
  out = take_p.bind(values.reshape((size * values.shape[1],) + values.shape[2:]),
                    slots.reshape((math.prod(slots.shape[:-1]), slots.shape[-1])))
  return out.reshape((size,) + slots.shape[1:] + values.shape[3:]), 0


def _portable_lowering(ctx, values, slots):
  return mlir.lower_fun(_portable, multiple_results=False)(ctx, values, slots)


# -- the kernel ------------------------------------------------------------------------------
_BODY = r"""
typedef struct {
  const elem_t* in;
  const idx_t* slots;
  elem_t* out;
  int64_t m, n, w;                /* slots and entries per batch element; elements per entry */
} take_args;

static void run(const void* v, int64_t lo, int64_t hi) {
  const take_args* a = (const take_args*)v;
  const int64_t m = a->m, n = a->n, w = a->w;
  for (int64_t u = lo; u < hi;) {
    const int64_t b = u / m, end = (b + 1) * m < hi ? (b + 1) * m : hi;
    const elem_t* x = a->in + b * n * w;
    if (w == 1) {
      for (; u < end; ++u) {
        int64_t e = (int64_t)a->slots[u];
        a->out[u] = (e >= 0 && e < n) ? x[e] : 0;
      }
      continue;
    }
    for (; u < end; ++u) {
      int64_t e = (int64_t)a->slots[u];
      elem_t* y = a->out + u * w;
      if (e < 0 || e >= n) for (int64_t k = 0; k < w; ++k) y[k] = 0;
      else for (int64_t k = 0; k < w; ++k) y[k] = x[e * w + k];
    }
  }
}
"""

_HANDLER = r"""
XLA_FFI_Error* NAME(XLA_FFI_CallFrame* cf) {
  XLA_FFI_Error* early;
  if (jscorch_preamble(cf, &early)) return early;
  if (cf->args.size != 2 || cf->rets.size != 1)
    return jscorch_error(cf, "NAME: wrong number of buffers");
  const XLA_FFI_Buffer* v = (const XLA_FFI_Buffer*)cf->args.args[0];
  const XLA_FFI_Buffer* s = (const XLA_FFI_Buffer*)cf->args.args[1];
  if (v->rank < 2 || s->rank != 2 || v->dims[0] != s->dims[0])
    return jscorch_error(cf, "NAME: values [B, n, *block] and slots [B, m] expected");
  int64_t w = WIDEN;
  for (int64_t d = 2; d < v->rank; ++d) w *= v->dims[d];
  take_args a = {(const elem_t*)jscorch_arg(cf, 0), (const idx_t*)jscorch_arg(cf, 1),
                 (elem_t*)jscorch_ret(cf, 0), s->dims[1], v->dims[1], w};
  const int64_t units = s->dims[0] * s->dims[1];
  int64_t chunks = units * w * (int64_t)sizeof(elem_t) < SERIAL ? 1 : 4 * jscorch_num_threads(cf);
  if (chunks > units) chunks = units > 0 ? units : 1;
  int64_t* bounds = (int64_t*)malloc(sizeof(int64_t) * (chunks + 1));
  if (!bounds) return jscorch_error(cf, "NAME: out of memory");
  for (int64_t c = 0; c < chunks; ++c) bounds[c] = units / chunks * c;
  bounds[chunks] = units;
  jscorch_parallel_for(cf, run, &a, bounds, chunks);
  free(bounds);
  return NULL;
}
"""


def _element(itemsize: int) -> tuple[int, int]:
  """``(bytes per copied element, elements per value)``: the widest unsigned integer
  (at most 8 bytes) whose size divides ``itemsize``."""
  size = next(b for b in (8, 4, 2, 1) if itemsize % b == 0)
  return size, itemsize // size


def kernel_source(idx_dtype, val_dtype) -> tuple[str, str]:
  """``(target name, C source)`` of the kernel for an index dtype and a value dtype."""
  idx_t = _IDX_CTYPE[np.dtype(idx_dtype)]
  size, widen = _element(np.dtype(val_dtype).itemsize)
  name = f"jscorch_take_i{8 * np.dtype(idx_dtype).itemsize}_u{8 * size}x{widen}"
  header = "\n".join([f"typedef {idx_t} idx_t;", f"typedef uint{8 * size}_t elem_t;",
                      f"#define WIDEN {widen}", f"#define SERIAL {SERIAL_BYTES}LL"])
  return name, "\n".join([RUNTIME, header, _BODY, _HANDLER.replace("NAME", name)])


def _cpu_lowering(ctx, values, slots):
  val_aval, slot_aval = ctx.avals_in
  if settings.lowering != "portable" and kernel_build.compiler() is None:
    kernel_build.warn_no_compiler()
  if settings.lowering == "portable" or kernel_build.compiler() is None or \
      ctx.avals_out[0].size == 0 or val_aval.shape[1] == 0:
    return _portable_lowering(ctx, values, slots)
  name = kernel_build.ensure_registered(*kernel_source(slot_aval.dtype, val_aval.dtype))
  return jax.ffi.ffi_lowering(name)(ctx, values, slots)


take_p.def_impl(_impl)
take_p.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[take_p] = _jvp
ad.primitive_transposes[take_p] = _transpose
batching.primitive_batchers[take_p] = _batching_rule
mlir.register_lowering(take_p, _portable_lowering)
mlir.register_lowering(take_p, _cpu_lowering, platform="cpu")
