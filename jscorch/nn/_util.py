"""Helpers shared by the :mod:`jscorch.nn` layers: argument checks and sparse-aware products."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jscorch.array import SparseArray, is_sparse
from jscorch.einsum import einsum
from jscorch.graph import check_adjacency
from jscorch.primitives._errors import SparseFormatError


def require_rngs(rngs, layer: str) -> nnx.Rngs:
  """Returns ``rngs`` or raises a TypeError naming ``layer`` (NNX layers initialise eagerly)."""
  if rngs is None:
    raise TypeError(f"{layer}: rngs is required to initialise the parameters; got rngs=None. "
                    f"Pass rngs=nnx.Rngs(0) (from flax import nnx), as for nnx.Linear.")
  if not isinstance(rngs, nnx.Rngs):
    raise TypeError(f"{layer}: rngs must be an nnx.Rngs; got {type(rngs).__name__}. Pass "
                    "rngs=nnx.Rngs(0).")
  return rngs


def draw(rngs: nnx.Rngs, *specs) -> tuple:
  """Initial parameters: each ``(init, shape, dtype)`` spec (or None: no parameter, no key
  drawn) called with the next ``rngs.params()`` key, all in one jitted program.

  The values are those of calling each ``init`` eagerly in turn. Eagerly, every operation
  of an initialiser is its own small XLA program (Glorot uniform is five), each traced and
  compiled, or loaded from the persistent cache, in a fresh process: tens of milliseconds
  per layer before a model's first result. An ``init`` that cannot be hashed runs eagerly.

  Example:
    >>> import jax.numpy as jnp
    >>> kernel, bias = draw(nnx.Rngs(0), (nnx.initializers.glorot_uniform(), (3, 2),
    ...                                   jnp.float32), None)
    >>> kernel.shape, bias
    ((3, 2), None)
  """
  used = tuple(spec for spec in specs if spec is not None)
  keys = tuple(rngs.params() for _ in used)
  try:
    hash(used)
  except TypeError:
    values = iter(_draw_in_turn(used, keys))
  else:
    values = iter(_draw_in_turn_jitted(used, keys))
  return tuple(None if spec is None else next(values) for spec in specs)


def _draw_in_turn(specs, keys):
  return tuple(init(key, shape, dtype) for (init, shape, dtype), key in zip(specs, keys))


_draw_in_turn_jitted = jax.jit(_draw_in_turn, static_argnums=0)


def check_positive(value, name: str, layer: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{layer}: {name} must be a positive int; got {name}={value!r}.")
  return value


def check_features(x, in_features: int, layer: str, name: str = "x") -> None:
  """``x`` must be a 2-D dense array or SparseArray ``[n, in_features]``."""
  if not (is_sparse(x) or hasattr(x, "shape")):
    raise TypeError(f"{layer}: {name} must be an array or a SparseArray; got "
                    f"{type(x).__name__}.")
  if is_sparse(x) and (x.n_batch or x.n_dense):
    raise SparseFormatError(f"{layer}: a sparse {name} must be a plain 2-D matrix without "
                            f"batch or block dimensions; got {x!r}. Use jax.vmap for batches.")
  if len(x.shape) != 2:
    raise ValueError(f"{layer}: {name} must be 2-D [num_nodes, in_features]; got "
                     f"{name}.shape={tuple(x.shape)}. Use jax.vmap for a batch of inputs.")
  if x.shape[1] != in_features:
    raise ValueError(f"{layer}: wrong feature width: {name}.shape={tuple(x.shape)} has "
                     f"{x.shape[1]} features but the layer was built with "
                     f"in_features={in_features}.")


def check_graph_inputs(adj, x, in_features: int, layer: str) -> None:
  """Square adjacency, 2-D features of the right width, one row of ``x`` per node."""
  check_adjacency(adj, layer)
  check_features(x, in_features, layer)
  if x.shape[0] != adj.shape[1]:
    raise ValueError(f"{layer}: node counts differ: adj.shape={adj.shape} has {adj.shape[1]} "
                     f"nodes but x.shape={tuple(x.shape)} has {x.shape[0]} rows; x needs one "
                     "row per node.")


def matmul(x, kernel: jax.Array) -> jax.Array:
  """``x @ kernel`` for a dense or sparse ``x`` `[n, in]` and a dense ``kernel`` `[in, out]`."""
  if is_sparse(x):
    return einsum("ij,jk->ik", x, kernel)
  return jnp.matmul(x, kernel, precision=jax.lax.Precision.HIGHEST)


def compute_dtype(*xs):
  """The promoted floating dtype of the inputs (SparseArray values included)."""
  return jnp.result_type(*[x.dtype for x in xs if x is not None])


def as_dtype(x, dtype):
  return x.astype(dtype) if x.dtype != dtype else x


def with_block(A: SparseArray, data: jax.Array) -> SparseArray:
  """``A``'s pattern with values ``data`` `[nse, *block]` (adds trailing block dims)."""
  extra = data.shape[1:]
  fmt = A.format.replace(n_dense=len(extra))
  return SparseArray.from_buffers(data, A.indices, shape=A.shape + tuple(extra), format=fmt,
                                  check=False)


def safe_divide(num, den):
  """``num / den`` where ``den > 0``, else 0 (and zero, not NaN, gradients there)."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def dual_product(spec: str, value_on_copy: bool, a: SparseArray, a_copy: SparseArray, h):
  """``einsum(spec, a, h)`` for a sparse ``a`` kept in both orientations (``a_copy``).

  ``a_copy`` holds ``a``'s values in the other mode order (CSC for a CSR ``a``), built
  once and cached by the caller. The value runs over ``a_copy`` when ``value_on_copy``,
  else over ``a``; the tangent w.r.t. ``h`` runs over the other one. So whichever
  product the value needs in storage order, the transpose that reverse mode takes of
  the tangent, the backward product, gets the other storage order: neither pass
  re-sorts the pattern per call (forward mode pays that sort). Values are
  differentiated through ``a`` only: ``a_copy``'s tangent is not read, so it must hold
  ``a``'s values.

  Args:
    spec: a two-operand einsum, ``a``'s subscripts first (e.g. ``"ij,jf->if"``).
    value_on_copy: compute the value over ``a_copy``.
    a: the sparse operand whose values are differentiated.
    a_copy: ``a`` in the other orientation.
    h: the dense operand.

  Example:
    >>> import jax.numpy as jnp
    >>> import jscorch as js
    >>> a = js.from_dense(jnp.array([[0., 2.], [3., 0.]]), format=js.CSR)
    >>> dual_product("ij,jf->if", False, a, a.asformat("csc"), jnp.ones((2, 1))).ravel()
    Array([2., 3.], dtype=float32)
  """
  return einsum(spec, a_copy if value_on_copy else a, h)


@dual_product.defjvp
def _dual_product_jvp(spec, value_on_copy, primals, tangents):
  a, a_copy, h = primals
  da, _, dh = tangents
  out = einsum(spec, a_copy if value_on_copy else a, h)
  along_h = einsum(spec, a if value_on_copy else a_copy, dh)
  return out, einsum(spec, a.with_data(da.data), h) + along_h
