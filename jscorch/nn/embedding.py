"""``EmbeddingBag``: pooled embeddings of sparse multi-hot rows (recommender inputs)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jscorch.array import is_sparse
from jscorch.einsum import einsum
from jscorch.nn import _util
from jscorch.primitives._errors import SparseFormatError

default_embed_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)

MODES = ("sum", "mean")


class EmbeddingBag(nnx.Module):
  """Sums or averages the embeddings of each row's stored entries, weighted by their values.

  A batch is a `[batch, num_embeddings]` SparseArray: row ``b`` is one bag (a
  multi-hot example, e.g. the items a user interacted with), each stored entry
  ``(b, n)`` selects embedding ``n`` with weight ``value``. Then

  * ``mode="sum"``: ``out_b = sum_n value_bn * embedding[n]`` — one sparse einsum
    ``"bn,nf->bf"`` (PyTorch's ``EmbeddingBag(mode="sum", per_sample_weights=...)``);
  * ``mode="mean"``: the weighted mean ``out_b / sum_n value_bn`` (PyTorch's
    ``mode="mean"`` for unit weights; a stored entry of weight 0 does not count, so
    masking an entry to 0 removes it from the bag). Bags whose weights sum to 0
    give 0. Weights are meant to be nonnegative.

  The gradient w.r.t. ``embedding`` is a dense array that is nonzero only on the
  rows used by the batch. A dense `[batch, num_embeddings]` array is accepted too
  (its nonzeros are the entries).

  Args:
    num_embeddings: vocabulary size.
    features: embedding width.
    mode: ``"sum"`` or ``"mean"``.
    embedding_init: initialiser of ``embedding`` (as ``nnx.Embed``).
    param_dtype: parameter dtype.
    rngs: ``nnx.Rngs`` (required).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jscorch as js
    >>> from jscorch import nn
    >>> bag = nn.EmbeddingBag(10, 4, mode="mean", rngs=nnx.Rngs(0))
    >>> bag.embedding.shape
    (10, 4)
    >>> batch = js.from_coo(jnp.array([[0, 1], [0, 7], [1, 3]]), jnp.ones(3), (2, 10))
    >>> out = bag(batch)
    >>> out.shape, bool(jnp.allclose(out[1], bag.embedding[...][3]))
    ((2, 4), True)
  """

  def __init__(self, num_embeddings: int, features: int, *, mode: str = "sum",
               embedding_init=default_embed_init, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    name = "EmbeddingBag"
    rngs = _util.require_rngs(rngs, name)
    self.num_embeddings = _util.check_positive(num_embeddings, "num_embeddings", name)
    self.features = _util.check_positive(features, "features", name)
    if mode not in MODES:
      raise ValueError(f"{name}: mode must be one of {MODES}; got mode={mode!r}.")
    self.mode = mode
    self.embedding = nnx.Param(_util.draw(rngs, (embedding_init, (num_embeddings, features),
                                                 param_dtype))[0])

  def __call__(self, bags) -> jax.Array:
    """``bags`` `[batch, num_embeddings]` (SparseArray or dense) → `[batch, features]`."""
    name = "EmbeddingBag"
    if not (is_sparse(bags) or hasattr(bags, "shape")):
      raise TypeError(f"{name}: bags must be a SparseArray [batch, num_embeddings]; got "
                      f"{type(bags).__name__}.")
    if is_sparse(bags) and (bags.n_batch or bags.n_dense):
      raise SparseFormatError(f"{name}: bags must be a 2-D SparseArray without batch or block "
                              f"dimensions; got {bags!r}. Use jax.vmap for a batch of batches.")
    if len(bags.shape) != 2 or bags.shape[1] != self.num_embeddings:
      raise ValueError(f"{name}: bags must have shape [batch, num_embeddings="
                       f"{self.num_embeddings}]; got bags.shape={tuple(bags.shape)}.")
    if not is_sparse(bags):
      bags = jnp.asarray(bags)
    return _embedding_bag(bags, self.embedding[...], self.mode)


@functools.partial(jax.jit, static_argnums=(2,))
def _embedding_bag(bags, table, mode):
  dtype = _util.compute_dtype(bags, table)
  table = table.astype(dtype)
  if is_sparse(bags):
    bags = _util.as_dtype(bags, dtype)
    out = einsum("bn,nf->bf", bags, table)
    count = einsum("bn->b", bags) if mode == "mean" else None
  else:
    bags = bags.astype(dtype)
    out = jnp.matmul(bags, table, precision=jax.lax.Precision.HIGHEST)
    count = jnp.sum(bags, axis=1) if mode == "mean" else None
  if mode == "mean":
    out = _util.safe_divide(out, count[:, None])
  return out
