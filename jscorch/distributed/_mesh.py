"""Mesh plumbing: the mesh context check, placing dense operands, ``shard_map``, host reads.

All transport is JAX's own: ``jax.shard_map`` over the array's mesh, ``jax.reshard``
/ ``jax.device_put`` / ``jax.make_array_from_callback`` for placement, and
``multihost_utils.process_allgather`` to read arrays that span processes.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jscorch.distributed._errors import SparseShardingError
from jscorch.primitives import checks


def is_explicit(mesh: Mesh) -> bool:
  return any(t == AxisType.Explicit for t in mesh.axis_types)


def check_context(mesh: Mesh, axes: tuple[str, ...], func: str) -> None:
  """Raises unless a sharded op over ``mesh`` may run here.

  * Inside ``shard_map`` over one of ``axes`` the global array is not available
    (its buffers are per-device there): the op must be called outside.
  * Under another mesh's context (``jax.set_mesh``) the op would mix meshes.
  * A mesh with ``Explicit`` axes (``jax.make_mesh``'s default) needs its context:
    JAX types every array by its sharding there, and ``jit`` needs the mesh.
  """
  ctx = jax.sharding.get_abstract_mesh()
  manual = set(getattr(ctx, "manual_axes", ()) or ())
  if manual & set(axes):
    raise SparseShardingError(
        f"{func}: called inside jax.shard_map over mesh axes {sorted(manual)}; got a global "
        f"sharded array over axes {axes}, expected a call outside shard_map. Call {func} "
        "outside: it runs its own shard_map over the array's mesh.")
  if ctx.shape_tuple and ctx != mesh.abstract_mesh and not manual:
    raise SparseShardingError(
        f"{func}: called inside the context of another mesh; got the context "
        f"{dict(ctx.shape_tuple)}, expected the array's mesh {dict(mesh.shape)}. Use "
        "`with jax.set_mesh(A.mesh):`, or shard the array on the mesh of the context.")
  if is_explicit(mesh) and not ctx.shape_tuple:
    raise SparseShardingError(
        f"{func}: called outside the mesh context; got a mesh with Explicit axes "
        f"{dict(mesh.shape)} (jax.make_mesh's default), expected the call inside its "
        "context. Wrap the call, and any jax.jit around it, in `with jax.set_mesh(mesh):` "
        "(or build the mesh with axis_types=(jax.sharding.AxisType.Auto,) * ndim).")


def _strip(spec, mesh: Mesh) -> tuple:
  """``spec`` in one spelling per placement on ``mesh``: axes of size 1 (which split
  nothing) dropped, one-axis tuples unwrapped, trailing ``None`` dropped. JAX rewrites
  ``P(("r", "c"))`` as ``P("c")`` on a 1×8 mesh after an elementwise op, for example."""
  parts = []
  for p in spec:
    names = tuple(p) if isinstance(p, (list, tuple)) else (() if p is None else (p,))
    names = tuple(a for a in names if mesh.shape[a] != 1)
    parts.append(names[0] if len(names) == 1 else (names or None))
  while parts and parts[-1] is None:
    parts.pop()
  return tuple(parts)


def _sharding_of(x):
  """``(mesh, spec)`` of ``x`` when it carries a NamedSharding, else ``None``."""
  s = getattr(x, "sharding", None) if not isinstance(x, jax.core.Tracer) else None
  if s is None:
    try:
      s = jax.typeof(x).sharding
    except Exception:  # noqa: BLE001 - numpy and python scalars carry none
      return None
  if isinstance(s, NamedSharding) and s.mesh.shape_tuple:
    return s.mesh, s.spec
  if s is not None and not isinstance(s, NamedSharding) and len(getattr(s, "device_set", ())) > 1:
    return "other", None
  return None


def place(x, mesh: Mesh, spec: P, what: str, func: str, also=()):
  """``x`` with sharding ``spec`` on ``mesh``, or a clear error when it lives elsewhere.

  Accepted as they are or resharded: unsharded arrays (numpy, single device,
  uncommitted), arrays replicated on ``mesh`` and arrays already sharded as
  ``spec``. Rejected: arrays on another mesh, and arrays on ``mesh`` partitioned
  another way (resharding those silently would move data the caller did not ask
  for), unless their spec is in ``also``.
  """
  got = _sharding_of(x)
  if got is not None:
    m, s = got
    same_mesh = m != "other" and tuple(m.axis_names) == tuple(mesh.axis_names) and \
        tuple(m.axis_sizes) == tuple(mesh.axis_sizes) and (
            not isinstance(m, Mesh) or np.array_equal(m.device_ids, mesh.device_ids))
    if not same_mesh:
      where = "several devices without a mesh" if m == "other" else f"mesh {dict(m.shape)}"
      raise SparseShardingError(
          f"{func}: {what} is sharded incompatibly; got an array on {where}, expected one "
          f"on the sparse array's mesh {dict(mesh.shape)} ({tuple(mesh.devices.flat)[:2]}...). "
          "Move it with jax.device_put(x, jax.sharding.NamedSharding(A.mesh, spec)) or "
          "shard both on one mesh.")
    if _strip(s, mesh) not in ((), *(_strip(t, mesh) for t in (spec, *also))):
      raise SparseShardingError(
          f"{func}: {what} is sharded incompatibly; got spec {s} on the array's mesh, "
          f"expected {spec} (or replicated). Reshard it explicitly, e.g. with "
          f"jax.device_put(x, jax.sharding.NamedSharding(A.mesh, {spec})).")
  if is_explicit(mesh):
    return jax.reshard(x, spec)
  if isinstance(x, jax.core.Tracer):
    return x
  return jax.device_put(x, NamedSharding(mesh, spec))


def smap(mesh: Mesh, body, in_specs, out_specs):
  """``jax.shard_map`` over ``mesh``, with JAX's replication (``vma``) type checks on."""
  return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs)


def vary(x, axes: tuple[str, ...]):
  """``x`` typed as varying over the mesh ``axes`` inside ``shard_map`` (JAX's ``vma``).

  A replicated operand must be cast before it meets sharded values in a jscorch
  einsum (as ``lax`` ops do by themselves): the cast transposes to a ``psum``, which
  sums the operand's cotangent over the devices.
  """
  missing = tuple(a for a in axes if a not in jax.typeof(x).mat.varying)
  return jax.lax.pcast(x, missing, to="varying") if missing else x


def gather_replicated(x, axes):
  """``jax.lax.all_gather(x, axes, tiled=True)`` typed as replicated over ``axes``.

  ``all_gather`` is typed varying → varying; an output spec without ``axes`` needs
  the invariant form, which JAX 0.10 has no public name for (its transpose is a
  local slice instead of a ``psum_scatter``).
  """
  from jax._src.lax.parallel import all_gather_invariant
  return all_gather_invariant(x, axes, tiled=True)


def from_host(host: np.ndarray, mesh: Mesh, spec: P) -> jax.Array:
  """A global array with sharding ``spec`` from a host array present on every process."""
  sharding = NamedSharding(mesh, spec)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def to_host(x) -> np.ndarray:
  """The whole of a (possibly multi-process) array as numpy, on every process."""
  if isinstance(x, np.ndarray):
    return x
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


is_concrete = checks.is_concrete    # the one definition; products.py calls _mesh.is_concrete
