"""``js.softmax``: softmax over the stored entries of a SparseArray (sparse attention, GAT)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jscorch import _static
from jscorch.array import SparseArray, is_sparse
from jscorch.ops import blocks
from jscorch.ops.blocks import is_blocked
from jscorch.ops.coalesce import coalesced
from jscorch.ops.unary import valid_mask
from jscorch.primitives import segment
from jscorch.primitives._errors import SparseFormatError


def softmax(x, axis: int = -1):
  """Softmax along ``axis`` over the **stored** entries only; the result has ``x``'s pattern.

  For each fixed position of the other dimensions (a CSR row, for the last
  axis), the stored values ``v`` become ``exp(v) / sum(exp(v))`` over the entries
  stored in that slice. Implicit zeros are *absent*, not ``exp(0)`` terms, so
  this equals a dense softmax with the missing entries masked to ``-inf`` (as in
  graph attention); a slice with no entries stays empty. Explicitly stored zeros
  do take part. Duplicates of a non-unique format are summed first, as for every
  non-linear map (the result has the format of ``x.sum_duplicates()``).
  Padding keeps value 0 and gets no gradient. Differentiable (to any order) with
  respect to the values; works under ``jit`` and ``vmap``.

  Args:
    x: a SparseArray (any format, batch and block dims), or a dense array (then
      this is ``jax.nn.softmax(x, axis)``). In a blocked format (BSR) the slice is every
      element of the stored blocks along ``axis`` (:func:`jscorch.ops.blocks.softmax`).
    axis: a sparse dimension of ``x`` (negative counts from the end), or a block
      dimension (softmax within each stored block). Static.

  Returns:
    A SparseArray with ``x``'s format, shape, ``nse`` and index buffers (for a
    non-unique format, those of ``x.sum_duplicates()``).

  Raises:
    SparseFormatError: ``axis`` is a batch dimension or out of range.
    TypeError: non-floating values, or a traced ``axis``.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0., 1.], [0., 0., 0.], [0., 5., 0.]]))
    >>> js.softmax(A, axis=-1).todense()
    Array([[0.5, 0. , 0.5],
           [0. , 0. , 0. ],
           [0. , 1. , 0. ]], dtype=float32)
  """
  func = "softmax"
  if not is_sparse(x):
    return jax.nn.softmax(x, axis=axis)
  A: SparseArray = x
  if not jnp.issubdtype(A.dtype, jnp.floating):
    raise TypeError(f"{func}: needs real floating values; got dtype {A.dtype}. Cast with "
                    "A.astype(jnp.float32).")
  nd, nb, ns = A.ndim, A.n_batch, A.n_sparse
  ax = _static.static_int(axis, "axis", func)
  if not -nd <= ax < nd:
    raise SparseFormatError(f"{func}: axis out of range; got axis={axis}, expected "
                            f"-{nd} <= axis < {nd} for {A!r}.")
  ax %= nd
  A = coalesced(A)
  if is_blocked(A) and nb <= ax < nb + ns:
    return blocks.softmax(A, ax - nb)
  if ax < nb:
    raise SparseFormatError(
        f"{func}: axis {ax} is a batch dimension of {A!r}; got axis={axis}, expected a sparse "
        f"dimension ({nb}..{nb + ns - 1}) or a block dimension. Batch elements have separate "
        "patterns; densify with A.todense() to normalise across them.")
  if ax >= nb + ns:
    valid = valid_mask(A)
    data_axis = ax - nb - ns + nb + 1        # data is [*batch, nse, *block]
    safe = jnp.where(valid, A.data, jnp.zeros((), A.dtype))
    return A.with_data(jnp.where(valid, jax.nn.softmax(safe, axis=data_axis), 0))
  return A.with_data(segment.softmax(A.layout, A.data, A.indices, ax - nb))
