"""Private helpers shared by :mod:`jscorch.graph`, :mod:`jscorch.nn` and :mod:`jscorch.distributed`.

One copy each of: the coordinates of a matrix's stored entries, the missing-self-loop
weights, a zero-safe ``d ** -0.5``, and the registry through which an adjacency type
provides the aggregation the graph layers call (see :mod:`jscorch.nn.aggregation`).
This module imports only ``jax``, :mod:`jscorch.primitives` and :mod:`jscorch.einsum`, so
every package can use it without importing another (``jscorch.distributed`` registers its sharded
aggregation here without importing ``jscorch.nn``, and ``jscorch.nn`` looks it up
without importing ``jscorch.distributed``).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jscorch.einsum import einsum
from jscorch.primitives import convert


def rows_cols(adj) -> tuple[jax.Array, jax.Array]:
  """`[nse]` row and column coordinates of every stored entry of a 2-D SparseArray.

  Aligned with ``adj.data``; padding entries get ``(num_rows, num_cols)``.
  """
  coords = convert.storage_to_logical(adj.layout, convert.leaf_coordinates(adj.layout,
                                                                           adj.indices))
  return coords[..., 0], coords[..., 1]


def missing_loops(adj, fill_value) -> jax.Array:
  """`[n]`: ``fill_value`` for the nodes without a stored self loop, 0 for the others.

  The stored diagonal entries are counted by the einsum ``ii->i`` of ones over ``adj``'s
  pattern (one pass over the entries, a kernel on CPU; a stored zero weight still counts),
  not a scatter of every entry's coordinates.
  """
  n = adj.shape[0]
  loops = einsum("ii->i", adj.with_data(jnp.ones_like(adj.data)))
  fill = jnp.broadcast_to(jnp.asarray(fill_value, adj.dtype), (n,))
  return jnp.where(loops > 0, jnp.zeros((), adj.dtype), fill)


def inv_sqrt(d):
  """``d ** -0.5`` with 0 where ``d <= 0`` (and a zero, not NaN, gradient there)."""
  ok = d > 0
  return jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, d, 1)), 0)


# -- aggregation registry ----------------------------------------------------------------------
_AGGREGATIONS: dict[type, Callable[[Any], Any]] = {}


def register_aggregation(adjacency_type: type, factory: Callable[[Any], Any]) -> None:
  """Makes ``factory(adj)`` the aggregation of adjacencies of ``adjacency_type``.

  ``factory`` is also the aggregation's class: instances of it are returned unchanged
  by :func:`find_aggregation`'s callers (an already built aggregation is accepted
  where an adjacency is).
  """
  _AGGREGATIONS[adjacency_type] = factory


def find_aggregation(adj) -> Callable[[Any], Any] | None:
  """The registered factory for ``type(adj)`` (or a base class), else None."""
  for cls in type(adj).__mro__:
    if cls in _AGGREGATIONS:
      return _AGGREGATIONS[cls]
  return None


def is_registered_aggregation(obj) -> bool:
  """Whether ``obj`` is an instance of a registered aggregation class."""
  return any(isinstance(f, type) and isinstance(obj, f) for f in _AGGREGATIONS.values())
