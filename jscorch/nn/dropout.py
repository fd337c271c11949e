"""Dropout on the stored values of a SparseArray: ``js.dropout`` and ``nn.SparseDropout``.

Dropout of a sparse array zeroes each *stored* value with probability ``rate``
and scales the kept ones by ``1 / (1 - rate)``; the pattern (``pos``/``crd``,
``nse``) is unchanged, implicit zeros stay zero and padding stays 0, so the
result has the same format and can go straight into ``js.einsum`` or a layer.
This is what ``nnx.Dropout`` does on the densified array, without densifying
(the dropped entries become explicit zeros; ``A.eliminate_zeros()`` removes them).
"""
from __future__ import annotations

from numbers import Real

import jax
import jax.numpy as jnp
from flax import nnx

from jscorch.array import is_sparse

__all__ = ["SparseDropout", "dropout"]


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


class SparseDropout(nnx.Dropout):
  """``nnx.Dropout`` that also takes SparseArrays: dropout on the stored values.

  Constructed and used exactly like ``nnx.Dropout`` (``rate``, ``deterministic``,
  ``rng_collection``, ``rngs``; ``model.train()`` / ``model.eval()`` and
  ``nnx.view`` switch it). A dense input gets ``nnx.Dropout``'s behaviour; a
  SparseArray input gets :func:`jscorch.dropout` on its stored values: same
  format, pattern and ``nse``, padding stays 0, implicit zeros stay zero.
  ``broadcast_dims`` applies to dense inputs only.

  The layer has no parameters; it draws one key per call from its ``rngs``
  stream, so pass the module (or the model holding it) as an argument to
  ``nnx.jit`` / ``js.sparsify`` to advance the stream.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jscorch as js
    >>> from jscorch import nn
    >>> drop = nn.SparseDropout(0.5, rngs=nnx.Rngs(0))
    >>> A = js.from_dense(jnp.array([[1., 0., 2.], [0., 3., 4.]]), format="csr", nse=5)
    >>> drop(A)
    SparseArray(float32[2, 3], format=CSR, nse=5)
    >>> bool(jnp.all(drop(A, deterministic=True).data == A.data))
    True
  """

  def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
    """Dropout of ``inputs`` (dense, or a SparseArray's stored values)."""
    if not is_sparse(inputs):
      return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
    if tuple(self.broadcast_dims):
      raise ValueError(f"SparseDropout: broadcast_dims apply to dense inputs only; got "
                       f"broadcast_dims={tuple(self.broadcast_dims)} with a SparseArray "
                       f"{inputs!r}, expected (). Drop broadcast_dims for sparse inputs.")
    _check_rate(self.rate, "SparseDropout")
    values = super().__call__(inputs.data, deterministic=deterministic, rngs=rngs)
    return inputs if values is inputs.data else inputs.with_data(values)
