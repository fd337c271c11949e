"""Attention over sparse patterns: ``GATConv`` (graph attention) and ``SparseAttention``.

Both follow the same three sparse steps, each a sparse operation that never forms
an `[n, n]` dense array:

1. **SDDMM**: scores only at the stored entries of the pattern, a *sampled*
   einsum (``js.einsum("ijh,ihd,jhd->ijh", pattern, q, k)``: the output has the
   pattern's entries, one value per head in a block dimension);
2. **softmax over each row's stored entries** (``js.softmax(scores, axis=1)``);
3. **SpMM**: ``js.einsum("ijh,jhd->ihd", weights, v)``.

The mask helpers build the patterns of sparse transformers as CSR SparseArrays
(static, built with numpy): :func:`local_window_mask`, :func:`strided_mask`,
:func:`bigbird_mask`; with ``block=b`` the same patterns at block granularity, as BSR
``(b, b)`` masks (every element of a stored block attends: one small dense product per
block on accelerators).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jscorch as js
from jscorch import graph
from jscorch.array import SparseArray, is_sparse
from jscorch.einsum import einsum
from jscorch.nn import _util
from jscorch.nn.aggregation import aggregation
from jscorch.nn.aggregation import dropout_values as _dropout
from jscorch.ops.blocks import is_blocked
from jscorch.ops.coalesce import coalesced
from jscorch.primitives.formats import BSR

glorot_init = nnx.initializers.glorot_uniform()
zeros_init = nnx.initializers.zeros_init()


def _row_softmax(scores: SparseArray) -> SparseArray:
  """Softmax over the stored entries of each row of `[n, m, *block]` scores (per block element)."""
  return js.softmax(scores, axis=1)


def _pattern(adj: SparseArray, num_heads: int, dtype) -> SparseArray:
  """``adj``'s pattern with value 1 and a trailing head block dimension: `[n, m, heads]`
  (repeated coordinates of a non-unique ``adj`` merged: one score per coordinate)."""
  adj = coalesced(adj)
  return _util.with_block(adj, jnp.ones((adj.nse, num_heads), dtype))


def _dropout_key(rngs, stream):
  """A key from a call-time ``rngs`` (key, ``nnx.Rngs`` or stream) or the layer's stream."""
  if rngs is None:
    if stream is None:
      raise ValueError("dropout is active but the layer has no rng stream; pass rngs= at call "
                       "time or build the layer with rngs=nnx.Rngs(...).")
    return stream()
  if isinstance(rngs, nnx.Rngs):
    return rngs.dropout()
  if isinstance(rngs, nnx.RngStream):
    return rngs()
  return rngs


class GATConv(nnx.Module):
  """Graph attention (Veličković et al.), multi-head, on a sparse adjacency.

  For each head ``h``: ``z = x W`` (``kernel`` `[in, heads * out]`), scores
  ``e_ij = LeakyReLU(a_dst . z_i + a_src . z_j)`` at the stored entries of
  ``adj`` (one SDDMM: the sum is the inner product of ``[a_dst . z_i, 1]`` and
  ``[1, a_src . z_j]``), ``alpha = softmax_j(e_ij)`` over row ``i``'s stored
  entries, attention dropout on ``alpha``, and ``out_i = sum_j alpha_ij z_j``
  (SpMM). Heads are concatenated (``concat=True``) or averaged, then ``bias`` is
  added. As in PyG, missing self loops are added first (``add_self_loops``) and
  the adjacency's values are not used (only its pattern). To add the self loops once
  for many calls (and every layer of a model), pass ``nn.gat_adjacency(adj)``
  (:class:`~jscorch.nn.aggregation.GATAdjacency`) instead of ``adj``.

  Args:
    in_features: input width.
    out_features: width per head.
    num_heads: number of heads.
    concat: concatenate heads (output `[n, heads * out]`) or average them (`[n, out]`).
    negative_slope: LeakyReLU slope of the scores.
    dropout: attention dropout rate (active when not ``deterministic``).
    add_self_loops: add the missing self loops.
    use_bias: add ``bias``.
    kernel_init, bias_init, param_dtype: initialisers and dtype (Glorot like PyG).
    rngs: ``nnx.Rngs`` (required; also the dropout stream).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jscorch import graph, nn
    >>> adj = graph.from_edge_index(jnp.array([[0, 1, 1, 2], [1, 0, 2, 1]]), num_nodes=3)
    >>> gat = nn.GATConv(4, 8, num_heads=2, rngs=nnx.Rngs(0))
    >>> gat.kernel.shape, gat.att_src.shape, gat.att_dst.shape, gat.bias.shape
    ((4, 16), (2, 8), (2, 8), (16,))
    >>> gat(adj, jnp.ones((3, 4))).shape
    (3, 16)
  """

  def __init__(self, in_features: int, out_features: int, *, num_heads: int = 1,
               concat: bool = True, negative_slope: float = 0.2, dropout: float = 0.0,
               add_self_loops: bool = True, use_bias: bool = True, kernel_init=glorot_init,
               bias_init=zeros_init, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    name = "GATConv"
    rngs = _util.require_rngs(rngs, name)
    self.in_features = _util.check_positive(in_features, "in_features", name)
    self.out_features = _util.check_positive(out_features, "out_features", name)
    self.num_heads = _util.check_positive(num_heads, "num_heads", name)
    self.concat = concat
    self.negative_slope = float(negative_slope)
    self.add_self_loops = add_self_loops
    self.use_bias = use_bias
    h, f = num_heads, out_features
    width = h * f if concat else f
    kernel, att_src, att_dst, bias = _util.draw(
        rngs, (kernel_init, (in_features, h * f), param_dtype),
        (kernel_init, (h, f), param_dtype), (kernel_init, (h, f), param_dtype),
        (bias_init, (width,), param_dtype) if use_bias else None)
    self.kernel = nnx.Param(kernel)
    self.att_src = nnx.Param(att_src)
    self.att_dst = nnx.Param(att_dst)
    self.bias = nnx.Param(bias) if use_bias else nnx.data(None)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def attention(self, adj, x, *, deterministic: bool | None = None, rngs=None):
    """Returns ``(out, alpha)``: the per-head outputs `[n, heads, out]` and the attention
    weights, a `[n, n, heads]` SparseArray with the pattern of ``adj`` (plus self loops).
    A sharded ``adj`` has no such array: a SparseShardingError says so."""
    return self._forward(adj, x, deterministic, rngs, "GATConv.attention", weights=True)

  def _forward(self, adj, x, deterministic, rngs, func, weights=False):
    agg = aggregation(adj)
    x = agg.features(x, self.in_features, func)
    key = _dropout_key_if_active(self.dropout, deterministic, rngs)
    out = _gat(agg, x, self.kernel[...], self.att_src[...], self.att_dst[...], key,
               self.num_heads, self.negative_slope, self.add_self_loops, self.dropout.rate,
               weights, func)
    if weights:
      return out
    return _gat_output(agg, out, self.bias[...] if self.use_bias else None, self.concat)

  def __call__(self, adj, x, *, deterministic: bool | None = None, rngs=None) -> jax.Array:
    """``adj`` `[n, n]` SparseArray, ``x`` `[n, in]` → `[n, heads * out]` (or `[n, out]`).

    Args:
      deterministic: disable attention dropout (default: the module's mode, see
        ``model.train()`` / ``model.eval()``).
      rngs: a key or ``nnx.Rngs`` for the dropout (default: the layer's stream).

    A sharded ``adj`` (:func:`jscorch.distributed.shard`) runs the same forward
    data-parallel over its rows (``x`` and the result in node layout, attention
    dropout inactive).
    """
    return self._forward(adj, x, deterministic, rngs, "GATConv")


# Forwards are jitted functions of arrays and static options (see graph_conv.py).
@functools.partial(jax.jit, static_argnums=(6, 7, 8, 9, 10, 11))
def _gat(agg, x, kernel, att_src, att_dst, key, num_heads, negative_slope, add_self_loops,
         rate, weights, func):
  dtype = _util.compute_dtype(x, kernel)
  n, h = x.shape[0], num_heads
  z = _util.matmul(_util.as_dtype(x, dtype), kernel.astype(dtype))
  z = z.reshape(n, h, kernel.shape[1] // h)          # (no -1: n may be 0)
  a_src = jnp.einsum("nhf,hf->nh", z, att_src.astype(dtype))
  a_dst = jnp.einsum("nhf,hf->nh", z, att_dst.astype(dtype))
  return agg.gat_aggregate(z, a_src, a_dst, negative_slope=negative_slope,
                           add_self_loops=add_self_loops,
                           dropout=None if key is None else (rate, key), weights=weights,
                           func=func)


@functools.partial(jax.jit, static_argnums=(3,))
def _gat_output(agg, out, bias, concat):
  out = out.reshape(out.shape[0], out.shape[1] * out.shape[2]) if concat else out.mean(axis=1)
  return agg.output(out if bias is None else out + bias.astype(out.dtype))


def _dropout_key_if_active(dropout: nnx.Dropout, deterministic, rngs):
  """The dropout key when ``dropout`` is active for this call, else None."""
  det = dropout.deterministic if deterministic is None else deterministic
  if det or dropout.rate == 0:
    return None
  return _dropout_key(rngs, dropout.rngs)


class SparseAttention(nnx.Module):
  """Multi-head self-attention restricted to a sparse mask pattern.

  ``q, k, v = x W_q, x W_k, x W_v`` (``nnx.Linear`` submodules ``query``, ``key``,
  ``value``, each `[features, qkv_features]`), split into ``num_heads`` heads;
  scores ``q_i . k_j / sqrt(head_dim)`` only at the stored entries of ``mask``
  (SDDMM), softmax over each row's stored entries, attention dropout, SpMM with
  ``v``, then the output projection ``out`` (`[qkv_features, out_features]`).
  Equal to dense attention with the non-stored entries masked to ``-inf``; rows
  without stored entries give 0 (before the output bias). A blocked mask (BSR, e.g.
  ``bigbird_mask(L, block=64)``) attends to every element of its stored blocks (the
  mask's values are not read) and runs each head's products on the blocks.

  Args:
    num_heads: number of heads; must divide ``qkv_features``.
    features: input width.
    qkv_features: width of queries/keys/values (default ``features``).
    out_features: output width (default ``features``).
    dropout_rate: attention dropout.
    use_bias: biases in the four projections.
    param_dtype: parameter dtype.
    rngs: ``nnx.Rngs`` (required; also the dropout stream).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jscorch import nn
    >>> attn = nn.SparseAttention(num_heads=2, features=8, rngs=nnx.Rngs(0))
    >>> attn.query.kernel.shape, attn.out.kernel.shape
    ((8, 8), (8, 8))
    >>> mask = nn.local_window_mask(16, window=2)
    >>> mask
    SparseArray(float32[16, 16], format=CSR, nse=74)
    >>> attn(jnp.ones((16, 8)), mask).shape
    (16, 8)
  """

  def __init__(self, num_heads: int, features: int, *, qkv_features: int | None = None,
               out_features: int | None = None, dropout_rate: float = 0.0,
               use_bias: bool = True, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    name = "SparseAttention"
    rngs = _util.require_rngs(rngs, name)
    self.num_heads = _util.check_positive(num_heads, "num_heads", name)
    self.features = _util.check_positive(features, "features", name)
    self.qkv_features = features if qkv_features is None else qkv_features
    self.out_features = features if out_features is None else out_features
    _util.check_positive(self.qkv_features, "qkv_features", name)
    _util.check_positive(self.out_features, "out_features", name)
    if self.qkv_features % num_heads:
      raise ValueError(f"{name}: num_heads must divide qkv_features; got "
                       f"num_heads={num_heads}, qkv_features={self.qkv_features}.")
    self.head_dim = self.qkv_features // num_heads
    lin = dict(use_bias=use_bias, param_dtype=param_dtype, rngs=rngs)
    self.query = nnx.Linear(features, self.qkv_features, **lin)
    self.key = nnx.Linear(features, self.qkv_features, **lin)
    self.value = nnx.Linear(features, self.qkv_features, **lin)
    self.out = nnx.Linear(self.qkv_features, self.out_features, **lin)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def _check(self, x, mask):
    name = "SparseAttention"
    if is_sparse(x) or not hasattr(x, "shape"):
      raise TypeError(f"{name}: x must be a dense array [..., length, features]; got "
                      f"{type(x).__name__}.")
    if x.ndim < 2 or x.shape[-1] != self.features:
      raise ValueError(f"{name}: wrong feature width: x.shape={tuple(x.shape)}, expected "
                       f"[..., length, features={self.features}].")
    graph.check_adjacency(mask, name)
    if mask.shape[0] != x.shape[-2]:
      raise ValueError(f"{name}: the mask is for length {mask.shape[0]} (mask.shape="
                       f"{mask.shape}) but x.shape={tuple(x.shape)} has length "
                       f"{x.shape[-2]}; build the mask for the sequence length.")

  def attention_weights(self, x, mask) -> SparseArray:
    """The attention weights `[length, length, heads]` (pattern of ``mask``) for one `[L, F]`
    x; for a blocked mask a BSR `[heads, length, length]` (one batch element per head)."""
    self._check(x, mask)
    if x.ndim != 2:
      raise ValueError(f"SparseAttention.attention_weights: x must be [length, features]; got "
                       f"x.shape={tuple(x.shape)}.")
    return _sparse_attention_jit(x, mask, self._params(), None, self.num_heads, 0.0)[1]

  def _params(self):
    return {name: (lin.kernel[...], lin.bias[...] if lin.bias is not None else None)
            for name, lin in (("query", self.query), ("key", self.key), ("value", self.value),
                              ("out", self.out))}

  def __call__(self, x, mask, *, deterministic: bool | None = None, rngs=None) -> jax.Array:
    """``x`` `[..., length, features]`, ``mask`` `[length, length]` SparseArray →
    `[..., length, out]`.

    Leading dimensions of ``x`` are mapped with ``jax.vmap`` (one shared mask).

    Args:
      deterministic: disable attention dropout (default: the module's mode).
      rngs: a key or ``nnx.Rngs`` for the dropout (default: the layer's stream).
    """
    self._check(x, mask)
    key = _dropout_key_if_active(self.dropout, deterministic, rngs)
    lead = x.shape[:-2]
    flat = x.reshape((-1,) + x.shape[-2:])
    out = _batched_sparse_attention(flat, mask, self._params(), key, self.num_heads,
                                    float(self.dropout.rate))
    return out.reshape(lead + out.shape[1:])


def _linear(x, params):
  kernel, bias = params
  y = jnp.matmul(x, kernel.astype(x.dtype), precision=jax.lax.Precision.HIGHEST)
  return y if bias is None else y + bias.astype(x.dtype)


def _sparse_attention(x, mask, params, key, num_heads, rate):
  """One sequence `[L, F]` → (`[L, out]`, attention weights)."""
  dtype = _util.compute_dtype(x, params["query"][0])
  x = x.astype(dtype)
  length = x.shape[0]
  q, k, v = (_linear(x, params[name]).reshape(length, num_heads, -1)
             for name in ("query", "key", "value"))
  q = q / math.sqrt(q.shape[-1])
  if is_blocked(mask):
    o, weights = _blocked_heads(mask, q, k, v, key, rate)
    return _linear(o.reshape(length, -1), params["out"]), weights
  pattern = _pattern(mask, num_heads, dtype)
  scores = einsum("ijh,ihd,jhd->ijh", pattern, q, k)
  weights = _row_softmax(scores)
  dropped = weights if key is None else weights.with_data(_dropout(weights.data, rate, key))
  o = einsum("ijh,jhd->ihd", dropped, v).reshape(length, -1)
  return _linear(o, params["out"]), weights


def _blocked_heads(mask, q, k, v, key, rate):
  """The three sparse steps on a blocked ``mask``, one head at a time (``vmap``): ``q``,
  ``k``, ``v`` `[L, heads, d]` → `[L, heads, d]` and the weights, a BSR `[heads, L, L]`
  (a batch dimension per head) with every element of the mask's stored blocks."""
  pattern = mask.with_data(jnp.ones(mask.data.shape, q.dtype))
  keys = jax.random.split(key, q.shape[1]) if key is not None else None

  def head(qh, kh, vh, kk):
    weights = _row_softmax(einsum("ij,id,jd->ij", pattern, qh, kh))
    dropped = weights if kk is None else weights.with_data(_dropout(weights.data, rate, kk))
    return einsum("ij,jd->id", dropped, vh), weights

  return jax.vmap(head, in_axes=(1, 1, 1, None if keys is None else 0), out_axes=(1, 0))(
      q, k, v, keys)


_sparse_attention_jit = jax.jit(_sparse_attention, static_argnums=(4, 5))


@functools.partial(jax.jit, static_argnums=(4, 5))
def _batched_sparse_attention(xs, mask, params, key, num_heads, rate):
  if key is None:
    return jax.vmap(lambda x: _sparse_attention(x, mask, params, None, num_heads, rate)[0])(xs)
  keys = jax.random.split(key, xs.shape[0])
  return jax.vmap(lambda x, k: _sparse_attention(x, mask, params, k, num_heads, rate)[0])(
      xs, keys)


# -- mask helpers ----------------------------------------------------------------------------
def _mask_from_pairs(seq_len: int, rows, cols, dtype, block: int | None = None) -> SparseArray:
  """A CSR pattern of ones (duplicates merged), built on the host: nothing to compile. With
  ``block``, ``rows`` / ``cols`` are block coordinates and the mask is BSR ``(block, block)``
  with every element of its blocks set."""
  b = block or 1
  grid = graph._host_csr(rows, cols, 1.0, (seq_len // b,) * 2, np.dtype(dtype))
  if block is None:
    return grid.with_data(jnp.ones_like(grid.data))
  return SparseArray.from_buffers(jnp.ones((grid.nse, b, b), dtype), grid.indices,
                                  shape=(seq_len, seq_len), format=BSR((b, b)), check=False)


def _check_len(seq_len, name, block=None, causal=False):
  """``seq_len`` (and ``block``, which must divide it) checked; the number of positions, or
  of blocks with ``block``."""
  if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
    raise ValueError(f"{name}: seq_len must be a positive int; got {seq_len!r}.")
  if block is None:
    return int(seq_len)
  if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1 or \
      seq_len % block:
    padded = -(-int(seq_len) // max(int(block), 1)) * max(int(block), 1) \
        if isinstance(block, (int, np.integer)) else None
    raise ValueError(f"{name}: block must be a positive int dividing seq_len; got "
                     f"block={block!r}, seq_len={seq_len}. Pad the sequence to {padded} "
                     "positions, or pick a block that divides it.")
  if causal:
    raise ValueError(f"{name}: causal=True with block={block}: a block on the diagonal "
                     "would let positions attend to later ones in the same block. Use "
                     "block=None for a causal mask.")
  return int(seq_len) // int(block)


def local_window_mask(seq_len: int, window: int, *, causal: bool = False,
                      block: int | None = None, dtype=jnp.float32) -> SparseArray:
  """Each position attends to the positions within ``window`` of it (``|i - j| <= window``).

  Args:
    seq_len: sequence length.
    window: half width (0: only itself); in blocks with ``block``.
    causal: keep only ``j <= i`` (not with ``block``).
    block: build the pattern over blocks of ``block`` positions (dividing ``seq_len``):
      block ``I`` attends to blocks ``|I - J| <= window``.
    dtype: value dtype (values are 1).

  Returns:
    A `[seq_len, seq_len]` CSR SparseArray (BSR ``(block, block)`` with ``block``).

  Example:
    >>> local_window_mask(4, 1).todense()
    Array([[1., 1., 0., 0.],
           [1., 1., 1., 0.],
           [0., 1., 1., 1.],
           [0., 0., 1., 1.]], dtype=float32)
  """
  n = _check_len(seq_len, "local_window_mask", block, causal)
  if window < 0:
    raise ValueError(f"local_window_mask: window must be >= 0; got {window}.")
  i = np.repeat(np.arange(n), 2 * window + 1)
  j = i + np.tile(np.arange(-window, window + 1), n)
  keep = (j >= 0) & (j < n) & ((j <= i) if causal else True)
  return _mask_from_pairs(seq_len, i[keep], j[keep], dtype, block)


def strided_mask(seq_len: int, stride: int, *, causal: bool = False, block: int | None = None,
                 dtype=jnp.float32) -> SparseArray:
  """The strided pattern of Sparse Transformers (Child et al.): ``|i - j| < stride`` (local) or
  ``(i - j) % stride == 0`` (every ``stride``-th position). With ``block`` (dividing
  ``seq_len``; not with ``causal``) the same rule over block coordinates, as BSR.

  Example:
    >>> strided_mask(5, 2, causal=True).todense()
    Array([[1., 0., 0., 0., 0.],
           [1., 1., 0., 0., 0.],
           [1., 1., 1., 0., 0.],
           [0., 1., 1., 1., 0.],
           [1., 0., 1., 1., 1.]], dtype=float32)
  """
  n = _check_len(seq_len, "strided_mask", block, causal)
  if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
    raise ValueError(f"strided_mask: stride must be a positive int; got {stride!r}.")
  i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  keep = (np.abs(i - j) < stride) | ((i - j) % stride == 0)
  if causal:
    keep &= j <= i
  return _mask_from_pairs(seq_len, i[keep], j[keep], dtype, block)


def bigbird_mask(seq_len: int, *, window: int = 3, num_global: int = 2, num_random: int = 3,
                 seed: int = 0, block: int | None = None, dtype=jnp.float32) -> SparseArray:
  """BigBird's pattern (Zaheer et al.): local window, global tokens and random links.

  Position ``i`` attends to ``|i - j| <= window``, to the first ``num_global``
  positions (which in turn attend to every position), and to ``num_random``
  positions drawn uniformly (``numpy`` generator seeded with ``seed``). With ``block``
  (dividing ``seq_len``) every count is in blocks, as BigBird itself builds it: a BSR
  ``(block, block)`` mask.

  Example:
    >>> m = bigbird_mask(64, window=2, num_global=1, num_random=2)
    >>> m.shape, bool((m.todense()[0] == 1).all()), bool((m.todense()[:, 0] == 1).all())
    ((64, 64), True, True)
    >>> bigbird_mask(64, window=1, num_global=1, num_random=1, block=8)
    SparseArray(float32[64, 64], format=BSR((8, 8)), nse=37)
  """
  n = _check_len(seq_len, "bigbird_mask", block)
  if min(window, num_global, num_random) < 0:
    raise ValueError(f"bigbird_mask: window, num_global and num_random must be >= 0; got "
                     f"{window=}, {num_global=}, {num_random=}.")
  rng = np.random.default_rng(seed)
  i = np.repeat(np.arange(n), 2 * window + 1)
  j = i + np.tile(np.arange(-window, window + 1), n)
  keep = (j >= 0) & (j < n)
  rows, cols = [i[keep]], [j[keep]]
  g = min(num_global, n)
  all_pos = np.arange(n)
  for t in range(g):
    rows += [np.full(n, t), all_pos]
    cols += [all_pos, np.full(n, t)]
  if num_random:
    r = min(num_random, n)
    rand = np.stack([rng.choice(n, r, replace=False) for _ in range(n)])
    rows.append(np.repeat(all_pos, r))
    cols.append(rand.ravel())
  return _mask_from_pairs(seq_len, np.concatenate(rows), np.concatenate(cols), dtype, block)
