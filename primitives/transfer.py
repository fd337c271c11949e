"""Host arrays onto the device without compiling an XLA program for the copy."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def to_device(x, dtype=None) -> jax.Array:
  """``jnp.asarray(x, dtype)``; a numpy array is copied with ``jax.device_put`` instead.

  In a fresh process ``jnp.asarray`` of a numpy array runs a small staging program,
  traced, lowered and compiled (or loaded from the persistent cache) once per shape and
  dtype: about 10-25 ms each on a CPU, the largest part of building a SparseArray from
  scipy. ``jax.device_put`` copies the buffer directly (dtypes canonicalised the same
  way: int64 becomes int32 without x64). Anything else (JAX arrays, tracers, lists,
  scalars) goes through ``jnp.asarray``.

  Args:
    x: an array-like.
    dtype: the result's dtype (default: ``x``'s, canonicalised).

  Example:
    >>> import numpy as np
    >>> to_device(np.arange(3), np.float32)
    Array([0., 1., 2.], dtype=float32)
  """
  if isinstance(x, np.ndarray):
    return jax.device_put(x if dtype is None else x.astype(np.dtype(dtype), copy=False))
  return jnp.asarray(x, dtype)
