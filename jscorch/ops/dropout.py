"""``js.dropout``: dropout on the stored values of a SparseArray (no Flax needed).

Each stored value is zeroed with probability ``rate`` and the kept ones are
scaled by ``1 / (1 - rate)``; the pattern (``pos``/``crd``, ``nse``) is
unchanged, implicit zeros stay zero and padding stays 0. The Flax layer is
:class:`jscorch.nn.SparseDropout`.
"""
from __future__ import annotations

from numbers import Real

import jax
import jax.numpy as jnp

from jscorch.array import is_sparse

__all__ = ["dropout"]


def _check_rate(rate, name: str) -> float:
  if isinstance(rate, jax.Array) or not isinstance(rate, Real) or isinstance(rate, bool):
    raise TypeError(f"{name}: rate must be a concrete Python float; got {type(rate).__name__} "
                    f"{rate!r}, expected a number in [0, 1]. Pass a Python float (it is "
                    "static under jit).")
  if not 0.0 <= float(rate) <= 1.0:
    raise ValueError(f"{name}: rate is the probability of dropping a value; got rate={rate}, "
                     "expected 0 <= rate <= 1.")
  return float(rate)


def _drop(key, values: jax.Array, rate: float) -> jax.Array:
  if rate == 0.0:
    return values
  if rate == 1.0:               # no division by zero, no NaN gradients
    return jnp.zeros_like(values)
  keep = 1.0 - rate
  mask = jax.random.bernoulli(key, keep, values.shape)
  return jax.lax.select(mask, values / jnp.asarray(keep, values.dtype), jnp.zeros_like(values))


def dropout(key: jax.Array, A, rate: float):
  """Dropout on the stored values of ``A``: each is zeroed with probability ``rate``.

  The kept values are scaled by ``1 / (1 - rate)`` so the expectation is
  unchanged. A SparseArray keeps its format, pattern and ``nse`` (dropped entries
  become explicit zeros, padding stays 0); a dense array gets ordinary dropout
  on every element.

  Args:
    key: a ``jax.random`` key.
    A: a SparseArray (values `[*batch, nse, *block]`) or a dense array.
    rate: drop probability in ``[0, 1]``; a Python float (static under ``jit``).

  Returns:
    A SparseArray with ``A``'s pattern (or a dense array of ``A``'s shape).

  Raises:
    TypeError: ``rate`` is not a concrete number, or ``A`` is not an array.
    ValueError: ``rate`` is outside ``[0, 1]``.

  Example:
    >>> import jax, jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0., 2.], [0., 3., 4.]]), format="csr", nse=5)
    >>> D = js.dropout(jax.random.key(0), A, 0.5)
    >>> D                                   # same format, pattern and capacity
    SparseArray(float32[2, 3], format=CSR, nse=5)
    >>> bool(jnp.all((D.data == 0) | (D.data == 2 * A.data)))
    True
  """
  rate = _check_rate(rate, "dropout")
  if is_sparse(A):
    return A.with_data(_drop(key, A.data, rate))
  if not hasattr(A, "shape") or not hasattr(A, "dtype"):
    raise TypeError(f"dropout: A must be a SparseArray or an array; got {type(A).__name__}. "
                    "Convert it with js.from_dense or jnp.asarray.")
  return _drop(key, jnp.asarray(A), rate)
