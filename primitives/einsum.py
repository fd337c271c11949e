"""The sparse einsum primitive: any mix of dense and sparse operands, every transformation.

# ---------------------------------------------------------------------------------------
# jscorch_einsum: flat inputs as described by an EinsumSpec (all values share one dtype,
# index buffers are integer and valid for their layouts; padding is ignored).
# ---------------------------------------------------------------------------------------

Rules (DESIGN §4):

* **JVP**: the einsum is multilinear in the operands' values, so the tangent is a
  sum of einsums with one operand's values replaced by its tangent. A new-pattern
  (sparse × sparse) output's tangent is *sampled* at the primal output pattern.
* **Transpose** w.r.t. a dense operand: an einsum of the cotangent with the other
  operands, dense output. W.r.t. a sparse operand's values: the same einsum
  *sampled at that operand's pattern* — a gradient never densifies a sparse operand.
  Index buffers are integer and never linear.
* **Batching**: a batched dense operand gains an index; a sparse operand whose
  values alone are batched gains a dense block dimension (its pattern is shared);
  one whose pattern is batched gains a batch dimension (``n_batch + 1``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from . import backends, convert, einsum_kernel, einsum_portable, orient
from . import plan as kernel_planner
from .backends.c import backend as _c_backend  # noqa: F401  (registers the C backend)
from .backends.pallas import backend as _pallas_backend  # noqa: F401  (registers Pallas)
from .einsum_spec import (
  DENSE_OUT,
  PATTERN,
  SAMPLED_OUT,
  SPARSE_OUT,
  EinsumSpec,
  Operand,
  with_shared_patterns,
)
from .layout import Layout
from .planner import make_plan, pinned
from .settings import _on_change as settings_on_change
from .settings import settings

einsum_p = Primitive("jscorch_einsum")
einsum_p.multiple_results = True


def einsum_bind(spec: EinsumSpec, *flat) -> list:
  """Binds the primitive (inputs already validated and cast by the caller).

  Sources whose index buffers are the same objects are recorded in
  ``spec.same_pattern`` here, at bind time (the rules below keep it up to date).
  """
  return einsum_p.bind(*flat, spec=with_shared_patterns(spec, flat))


@functools.lru_cache(maxsize=1024)
def _compiled(spec: EinsumSpec):
  return jax.jit(lambda *flat: einsum_p.bind(*flat, spec=spec))


settings_on_change.append(_compiled.cache_clear)


def _einsum_impl(*flat, spec: EinsumSpec):
  return _compiled(spec)(*flat)


def _value_dtype(spec: EinsumSpec, avals):
  groups, _ = spec.split_inputs(avals)
  return groups[0][0].dtype


def _einsum_abstract_eval(*avals, spec: EinsumSpec):
  dtype = _value_dtype(spec, avals)
  if spec.out_kind == DENSE_OUT:
    out = [(spec.out_shape, dtype)]
  else:
    lay = spec.out_layout
    out = [(lay.data_shape, dtype)]
    if spec.out_kind == SPARSE_OUT:
      out += [(shape, lay.index_dtype) for _, _, shape in lay.index_shapes]
  # Inside jax.shard_map(check_vma=True) the outputs vary over every manual mesh axis
  # that some input varies over (JAX's `vma` type). Like lax ops, callers give every
  # differentiable input that type first (jax.lax.pcast(..., to="varying")), so the
  # transpose psums a replicated input's cotangent.
  varying = frozenset().union(*(a.mat.varying for a in avals))
  if not varying:
    return [jax.core.ShapedArray(shape, dt) for shape, dt in out]
  src = next(a for a in avals if a.mat.varying)
  typed = dict(sharding=jax.sharding.NamedSharding(src.sharding.mesh,
                                                   jax.sharding.PartitionSpec()),
               manual_axis_type=src.mat.update(varying=varying, unreduced=frozenset(),
                                               reduced=frozenset()))
  return [jax.core.ShapedArray(shape, dt, **typed) for shape, dt in out]


# -- JVP -----------------------------------------------------------------------------------
def _einsum_jvp(primals, tangents, *, spec: EinsumSpec):
  out = einsum_p.bind(*primals, spec=spec)
  spec = pinned(spec)     # the tangents join in the forward's order: its work suffices
  groups, pattern = spec.split_inputs(primals)
  tgroups, _ = spec.split_inputs(tangents)
  tan_spec = spec
  if spec.out_kind == SPARSE_OUT:
    tan_spec = spec.replace(out_kind=SAMPLED_OUT)
    pattern = tuple(out[1:])
  total = None
  for k in range(len(spec.operands)):
    t = tgroups[k][0]
    if type(t) is ad.Zero:
      continue
    flat = _with_value(spec, groups, k, ad.instantiate_zeros(t)) + list(pattern)
    term = einsum_p.bind(*flat, spec=tan_spec)[0]
    total = term if total is None else total + term
  if total is None:
    total = _zero_tangent(out[0])
  elif spec.out_kind == SPARSE_OUT:
    total = total * _poison_scale(out[0])
  return out, [total] + [_zero_tangent(x) for x in out[1:]]


def _poison_scale(data):
  """NaN where the primal values are NaN, else 1: a primal whose capacity ``nse``
  overflowed is poisoned, and its tangent (sampled at the truncated pattern) must not
  look right. A factor, so the tangent stays linear and cotangents are poisoned too."""
  nan = jnp.array(np.nan, data.dtype)
  return jax.lax.stop_gradient(jnp.where(jnp.isnan(data), nan, jnp.ones((), data.dtype)))


def _zero_tangent(x):
  return ad.Zero(jax.typeof(x).to_tangent_aval())


def _with_value(spec, groups, k, value):
  flat = []
  for j, bufs in enumerate(groups):
    flat += [value if j == k else bufs[0]] + list(bufs[1:])
  return flat


# -- transpose ------------------------------------------------------------------------------
def _einsum_transpose(cts, *flat, spec: EinsumSpec):
  groups, pattern = spec.split_inputs(flat)
  linear = [k for k, bufs in enumerate(groups) if ad.is_undefined_primal(bufs[0])]
  for bufs in groups:
    if any(ad.is_undefined_primal(b) for b in bufs[1:]):
      raise TypeError("jscorch_einsum: cannot transpose with respect to integer index buffers.")
  assert len(linear) == 1, "jscorch_einsum is transposed with respect to one operand at a time"
  (k,) = linear
  ct = cts[0]
  spec = pinned(spec)
  result = [None] * len(flat)
  if type(ct) is ad.Zero:
    return result
  target = spec.operands[k]
  ops = [op for j, op in enumerate(spec.operands) if j != k]
  new_flat = []
  for j, bufs in enumerate(groups):
    if j != k:
      new_flat += list(bufs)
  ops.append(spec.out_operand if spec.out_kind == SAMPLED_OUT else Operand(spec.out))
  new_flat += [ct] + (list(pattern) if spec.out_kind == SAMPLED_OUT else [])
  old = spec.source_ranks
  ranks = tuple(r for j, r in enumerate(old[:-1]) if j != k) + (old[-1],)
  # sources move: operands after k shift down, the sampled pattern becomes the cotangent
  # operand (last), and a sparse target's pattern becomes the sampled pattern
  image = {j: j - (j > k) for j in range(len(spec.operands)) if j != k}
  image[PATTERN] = len(ops) - 1
  image[k] = PATTERN if target.sparse else None
  spec = spec.replace(same_pattern=spec.remap_patterns(image))
  if target.sparse:
    new_spec = spec.replace(operands=tuple(ops), out=target.indices, out_kind=SAMPLED_OUT,
                            out_layout=target.layout, ranks=ranks + (spec.source_ranks[k],))
    new_flat += list(groups[k][1:])
  else:
    new_spec = spec.replace(operands=tuple(ops), out=target.indices, out_kind=DENSE_OUT,
                            out_layout=None, ranks=ranks + (len(ranks),))
  value = einsum_with_broadcast(new_spec, new_flat)
  at = sum(op.n_buffers for op in spec.operands[:k])
  result[at] = value
  return result


def einsum_with_broadcast(spec: EinsumSpec, flat) -> jax.Array:
  """Binds ``spec`` (dense or sampled output); output indices found in no operand
  (a dimension the cotangent does not depend on) are broadcast afterwards."""
  present = {i for op in spec.operands for i in op.indices}
  if spec.out_kind == SAMPLED_OUT:
    present |= set(spec.out_operand.bound)
  missing = [i for i in spec.out if i not in present]
  if not missing:
    return einsum_p.bind(*flat, spec=spec)[0]
  kept = tuple(i for i in spec.out if i in present)
  if spec.out_kind == SAMPLED_OUT:
    return _sampled_with_broadcast(spec, flat, kept)
  value = einsum_p.bind(*flat, spec=spec.replace(out=kept))[0] if any(
      op.sparse for op in spec.operands) else _dense_only(spec, flat, kept)
  expanded = jnp.expand_dims(value, [spec.out.index(i) for i in missing])
  return jnp.broadcast_to(expanded, spec.out_shape)


def _sampled_with_broadcast(spec: EinsumSpec, flat, kept) -> jax.Array:
  """A sampled output whose missing indices are block dims: computed without them,
  then broadcast along them (the data axes after ``(*batch, nse)``)."""
  lay = spec.out_layout
  block = spec.out_operand.block
  kept_block = tuple(i for i in block if i in kept)
  shape = lay.shape[:lay.n_batch + lay.n_sparse] + tuple(spec.size(i) for i in kept_block)
  small = Layout(lay.format.replace(n_dense=len(kept_block)), shape, lay.nse)
  value = einsum_p.bind(*flat, spec=spec.replace(out=kept, out_layout=small))[0]
  lead = len(lay.batch_shape) + 1
  expanded = jnp.expand_dims(value, [lead + j for j, i in enumerate(block) if i not in kept])
  return jnp.broadcast_to(expanded, lay.data_shape)


def _dense_only(spec, flat, out):
  args = []
  for op, x in zip(spec.operands, flat):
    args += [x, list(op.indices)]
  return jnp.einsum(*args, list(out))


# -- batching -------------------------------------------------------------------------------
def _einsum_batching_rule(args, dims, *, spec: EinsumSpec):
  size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  spec = pinned(spec)     # new batch indices must not reorder the joins that work sized
  new = spec.fresh_index()
  groups, pattern = spec.split_inputs(args)
  gdims, pdims = spec.split_inputs(dims)
  ops, flat, patterns_batched = [], [], False
  fronted = set()         # sources whose index buffers gain a leading batch dimension
  # A sparse result (new or sampled) over batched patterns: every sparse operand gains the
  # batch dimension (broadcast), so its sources are batched alike (merged or joined by a
  # kernel; a sparse product and its derivatives need no work then). So does a new pattern
  # sized without work (a CSR product, whose batched form needs no work either).
  whole = spec.out_kind != DENSE_OUT and (any(
      op.sparse and any(d is not None for d in ds[1:]) for op, ds in zip(spec.operands, gdims))
      or any(d is not None for d in pdims)) or spec.out_kind == SPARSE_OUT and spec.work == 0
  for k, (op, bufs, ds) in enumerate(zip(spec.operands, groups, gdims)):
    if all(d is None for d in ds) and not (whole and op.sparse):
      ops.append(op)
      flat += bufs
    elif not op.sparse:
      ops.append(Operand((new,) + op.indices))
      flat.append(jnp.moveaxis(bufs[0], ds[0], 0))
    elif all(d is None for d in ds[1:]) and not whole:       # values batched, pattern shared
      lay = op.layout
      ops.append(Operand(op.indices + (new,), _with_block(lay, size)))
      flat += [jnp.moveaxis(bufs[0], ds[0], -1)] + list(bufs[1:])
    else:
      ops.append(Operand((new,) + op.indices, _with_batch(op.layout, size)))
      flat += [_batch_front(b, d, size) for b, d in zip(bufs, ds)]
      patterns_batched = True
      fronted.add(k)
  if spec.out_kind == SAMPLED_OUT and (whole or any(d is not None for d in pdims)):
    fronted.add(PATTERN)
  spec = _split_shared(spec, fronted)
  sizes = spec.sizes + ((new, size),)
  if patterns_batched:     # the join now enumerates the matching pairs of every element
    spec = spec.replace(work=spec.work * size)
  if spec.out_kind == DENSE_OUT:
    new_spec = spec.replace(operands=tuple(ops), out=(new,) + spec.out, sizes=sizes)
    return einsum_p.bind(*flat, spec=new_spec), [0]
  lay = spec.out_layout
  if spec.out_kind == SPARSE_OUT and not patterns_batched:
    # One new pattern shared by all elements (it depends on the patterns only): the
    # values gain a trailing block dimension, the index buffers stay unbatched.
    new_spec = spec.replace(operands=tuple(ops), out=spec.out + (new,), sizes=sizes,
                            out_layout=_with_block(lay, size))
    out = einsum_p.bind(*flat, spec=new_spec)
    return out, [len(new_spec.out_layout.data_shape) - 1] + [None] * (len(out) - 1)
  if spec.out_kind == SAMPLED_OUT and all(d is None for d in pdims) and not whole:
    new_spec = spec.replace(operands=tuple(ops), out=spec.out + (new,), sizes=sizes,
                            out_layout=_with_block(lay, size))
    out = einsum_p.bind(*flat, *pattern, spec=new_spec)
    return out, [len(new_spec.out_layout.data_shape) - 1]
  new_spec = spec.replace(operands=tuple(ops), out=(new,) + spec.out, sizes=sizes,
                          out_layout=_with_batch(lay, size))
  if spec.out_kind == SAMPLED_OUT:
    flat += [_batch_front(b, d, size) for b, d in zip(pattern, pdims)]
  out = einsum_p.bind(*flat, spec=new_spec)
  return out, [0] * len(out)


def _split_shared(spec: EinsumSpec, fronted: set) -> EinsumSpec:
  """``same_pattern`` after batching: sources that shared index buffers still do when
  their buffers were treated alike (all kept, or all given the same leading batch
  dimension: shared buffers have the same batch dims), so each group splits in two."""
  groups = []
  for g in spec.same_pattern:
    groups += [tuple(s for s in g if s in fronted), tuple(s for s in g if s not in fronted)]
  return spec.replace(same_pattern=tuple(sorted(g for g in groups if len(g) > 1)))


def _with_block(lay: Layout, size: int) -> Layout:
  return Layout(lay.format.replace(n_dense=lay.n_dense + 1), lay.shape + (size,), lay.nse)


def _with_batch(lay: Layout, size: int) -> Layout:
  return Layout(lay.format.replace(n_batch=lay.n_batch + 1), (size,) + lay.shape, lay.nse)


def _batch_front(x, d, size):
  if d is None:
    return jnp.broadcast_to(x, (size,) + x.shape)
  return jnp.moveaxis(x, d, 0)


# -- lowering -------------------------------------------------------------------------------
def _einsum_portable_lowering(ctx, *args, spec: EinsumSpec):
  csr = einsum_portable.csr_equivalent(spec) if spec.work == 0 else None
  if csr is not None:       # no join capacity: Gustavson's CSR product between conversions
    fun = einsum_portable.in_float32(spec, functools.partial(_run_converted, spec, csr))
    return mlir.lower_fun(fun, multiple_results=True)(ctx, *args)
  if spec.work == 0 and make_plan(spec).expands and not einsum_portable.is_empty(spec) and \
      not einsum_portable.sized_without_work(spec):
    raise ValueError(
        f"jscorch_einsum: the portable lowering of {spec} joins sparse operands that contract "
        "and needs work= (the number of matching entry pairs); got work=0, expected a "
        "capacity. Pass work= to js.einsum.")
  fun = einsum_portable.in_float32(spec, functools.partial(einsum_portable.evaluate, spec))
  return mlir.lower_fun(fun, multiple_results=True)(ctx, *args)


def _vectorised(plan) -> bool:
  """Whether a planned kernel runs over SIMD lanes (a loop-nest kernel with a vector index)."""
  vector = getattr(plan, "vector", None)
  return vector is not None and vector.coord is not None


def _better_orientation(spec: EinsumSpec, plan, args, dtype,
                        always_transpose: bool) -> orient.Orientation | None:
  """The orientation of ``spec`` to run instead (:mod:`.orient`), or None: when the kernel of
  a dense output does not vectorise and the oriented one does, and always for a sampled
  output (its dense operands' summed index becomes contiguous: dot products in place of
  strided reductions)."""
  turned = orient.orient(spec)
  if turned is None or _vectorised(plan):
    return None
  other, _ = einsum_kernel.kernel_plan(turned.spec, args, dtype,
                                       always_transpose=always_transpose)
  if other is None:
    return None
  return turned if _vectorised(other) or spec.out_kind == SAMPLED_OUT else None


def _staged_kernel(spec: EinsumSpec, turned: orient.Orientation, args, dtype, backend,
                   platform: str):
  """The kernel running ``turned`` tile by tile on ``spec``'s own operands (no transposes
  around it; :func:`orient.tiling`) and the spec it records, or None where the tiling does
  not pay, the body of a dense output would not vectorise, or ``backend`` cannot print it."""
  itemsize = np.dtype(dtype).itemsize
  t = orient.tiling(spec, turned, itemsize, kernel_planner.VECTOR_BYTES // itemsize)
  if t is None:
    return None
  # (every tile runs the body over the one re-sorted driver: always worth it)
  body, _ = einsum_kernel.kernel_plan(t.spec, args, dtype, always_transpose=True)
  if body is None or not (_vectorised(body) or spec.out_kind == SAMPLED_OUT):
    return None
  kernel = kernel_planner.staged(body, t.extent, t.tile, t.operands, t.out)
  return (kernel, t.spec) if backend.supports(kernel, dtype, platform) is None else None


def _run_oriented(turned: orient.Orientation, *flat):
  """The einsum of ``turned.spec`` on the flat inputs, dense operands transposed to its
  axis order and the output transposed back."""
  groups, pattern = turned.spec.split_inputs(flat)
  moved = []
  for perm, bufs in zip(turned.operand_perms, groups):
    moved += [jnp.transpose(bufs[0], perm)] if perm is not None else bufs
  out = einsum_p.bind(*moved, *pattern, spec=turned.spec)
  if turned.out_perm is None:
    return out
  return [jnp.transpose(out[0], turned.out_perm)]


def _run_converted(spec: EinsumSpec, new: EinsumSpec, *flat):
  """The einsum ``spec`` as ``new``, the same einsum of operands in other formats (the CSR
  product of :func:`einsum_kernel.csr_product`, or :func:`einsum_kernel.converted`):
  operands converted to ``new``'s formats, a new sparse result converted back to
  ``spec``'s output format (a sampled output's pattern is never converted)."""
  groups, pattern = spec.split_inputs(flat)
  moved = []
  for op, to, bufs in zip(spec.operands, new.operands, groups):
    if op.layout == to.layout:
      moved += list(bufs)
      continue
    data, indices = convert.convert(op.layout, to.layout, bufs[0], tuple(bufs[1:]),
                                    func="einsum")
    moved += [data, *indices]
  out = einsum_p.bind(*moved, *pattern, spec=new)
  if spec.out_kind != SPARSE_OUT or new.out_layout == spec.out_layout:
    return out
  data, indices = convert.convert(new.out_layout, spec.out_layout, out[0], tuple(out[1:]),
                                  func="einsum")
  return [data, *indices]


def _parallel_only(backend) -> bool:
  """Whether ``backend``'s outer loop must have owners (``Backend.parallel_only``)."""
  return getattr(backend, "parallel_only", False)


def _einsum_backend_lowering(platform: str):
  """The lowering rule for ``platform``: the first backend registered for it (of those
  ``config.lowering`` names) that supports the planned kernel, else the portable rule.
  The decision is recorded in ``einsum_kernel.last_decisions``."""

  def rule(ctx, *args, spec: EinsumSpec):
    choice = settings.lowering
    reason = "portable"
    dtype = ctx.avals_out[0].dtype
    for backend in backends.for_platform(platform, choice):
      reason = backend.available()
      if reason is None:
        plan, reason = einsum_kernel.kernel_plan(spec, args, dtype,
                                                 always_transpose=_parallel_only(backend))
        if plan is not None:
          reason = backend.supports(plan, dtype, platform) or "kernel"
      # (the backend is available: a plan was made) a kernel between conversions: a CSR
      # product, or sources converted to formats that co-iterate or join (the lowering of
      # the converted einsum records its own decision)
      new = einsum_kernel.csr_product(spec, dtype) if reason == "sparse output" else \
          einsum_kernel.converted(spec, dtype) if reason == "co-iteration" else None
      if new is not None:
        return mlir.lower_fun(functools.partial(_run_converted, spec, new),
                              multiple_results=True)(ctx, *args)
      if reason == "kernel":
        turned = _better_orientation(spec, plan, args, dtype, _parallel_only(backend))
        staged = turned and _staged_kernel(spec, turned, args, dtype, backend, platform)
        if staged:                 # the oriented kernel tile by tile, transposing in cache
          einsum_kernel.last_decisions.append((staged[1], reason))
          return backend.lower(ctx, staged[0], *args, platform=platform)
        if turned is not None:     # transposes around the oriented spec's kernel (whose
          # lowering finds nothing left to orient, and records its own decision)
          return mlir.lower_fun(functools.partial(_run_oriented, turned),
                                multiple_results=True)(ctx, *args)
        einsum_kernel.last_decisions.append((spec, reason))
        return backend.lower(ctx, plan, *args, platform=platform)
    einsum_kernel.last_decisions.append((spec, reason))
    return _einsum_portable_lowering(ctx, *args, spec=spec)

  return rule


einsum_p.def_impl(_einsum_impl)
einsum_p.def_abstract_eval(_einsum_abstract_eval)
ad.primitive_jvps[einsum_p] = _einsum_jvp
ad.primitive_transposes[einsum_p] = _einsum_transpose
batching.primitive_batchers[einsum_p] = _einsum_batching_rule
mlir.register_lowering(einsum_p, _einsum_portable_lowering)
# One rule per platform that has backends. Cacheable: which inputs share index buffers
# is in the spec (same_pattern), not read from the lowering-time values.
def _register_platforms(platforms):
  for platform in platforms:
    mlir.register_lowering(einsum_p, _einsum_backend_lowering(platform), platform=platform)


_register_platforms(backends.platforms())
backends._on_register.append(_register_platforms)
