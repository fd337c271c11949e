"""Dropout on the stored values of a SparseArray: ``js.dropout`` and ``nn.SparseDropout``.

Dropout of a sparse array zeroes each *stored* value with probability ``rate``
and scales the kept ones by ``1 / (1 - rate)``; the pattern (``pos``/``crd``,
``nse``) is unchanged, implicit zeros stay zero and padding stays 0, so the
result has the same format and can go straight into ``js.einsum`` or a layer.
This is what ``nnx.Dropout`` does on the densified array, without densifying
(the dropped entries become explicit zeros; ``A.eliminate_zeros()`` removes them).
"""
from __future__ import annotations

from flax import nnx

from jscorch.array import is_sparse
from jscorch.ops.dropout import _check_rate
from jscorch.ops.dropout import dropout as dropout

__all__ = ["SparseDropout", "dropout"]


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
