"""``MoE``: a mixture of experts whose top-k gate is a sparse array, dispatched by ``js.einsum``
on CPU and by a grouped matmul (``jax.lax.ragged_dot``) on GPU and TPU."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jscorch.array import SparseArray, is_sparse
from jscorch.einsum import einsum
from jscorch.nn import _util
from jscorch.primitives.formats import CSR
from jscorch.primitives.grouped import grouped_matmul

DISPATCHES = ("auto", "einsum", "grouped")

lecun_init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
zeros_init = nnx.initializers.zeros_init()


class MoE(nnx.Module):
  """A layer of ``num_experts`` linear experts with top-k routing (Shazeer et al.; Switch).

  The router ``gate`` (``nnx.Linear`` `[in, num_experts]`, no bias) gives
  probabilities ``p = softmax(x W_g)``; each token keeps its ``top_k`` experts.
  The weight of a kept expert ``e`` is

  * ``top_k == 1`` (Switch Transformer): the router probability ``p_e`` itself,
    *not* renormalised to 1, so the expert output is scaled by ``p_e`` and the
    router learns from the task loss (a weight renormalised to 1 is a constant
    and would give the router exactly zero task gradient);
  * ``top_k > 1`` (Mixtral, GShard top-2): the kept probabilities renormalised
    to sum to 1 (a softmax over the kept logits); the router still gets a task
    gradient through the ratios between the kept experts.

  ``renormalize=`` overrides this choice (``True`` with ``top_k=1`` gives the
  router no task gradient, only the auxiliary loss's). These weights form a
  **sparse gate array** ``G`` `[tokens, num_experts]` (CSR, exactly ``top_k``
  entries per row), and the layer is the Scorch einsum

  ``y[t, o] = sum_e G[t, e] * (sum_i x[t, i] * kernel[e, i, o] + bias[e, o])``,

  evaluated by ``js.einsum("te,ti,eio->to", G, [x, 1], [kernel; bias])``: only the
  ``tokens * top_k`` selected (token, expert) pairs are computed, never all
  experts for all tokens. Gradients reach the router through ``G``'s values (and
  the auxiliary loss), the experts through the einsum.

  ``dispatch`` picks how the einsum runs: ``"einsum"`` (the sparse einsum's kernels),
  ``"grouped"`` (the ``tokens * top_k`` pairs sorted by expert, one grouped matmul
  ``jax.lax.ragged_dot`` over the expert groups, the weighted results summed back per
  token: XLA's ragged dot on GPU and TPU, and so are its gradients of every order,
  :mod:`jscorch.primitives.grouped`) or
  ``"auto"`` (default: ``"einsum"`` on CPU, where ``ragged_dot`` would expand to a
  dense product over all experts, ``"grouped"`` on every other platform, chosen when the
  function is lowered).

  The call returns ``(y, aux_loss)`` where ``aux_loss`` is Switch Transformer's
  load-balancing loss ``num_experts * sum_e f_e * P_e`` (``f_e``: fraction of the
  ``tokens * top_k`` assignments that go to expert ``e``; ``P_e``: mean router
  probability of ``e``); it is 1 for perfectly balanced routing. Add it to the
  task loss with a small coefficient (Switch uses 0.01).

  Args:
    num_experts: number of experts.
    in_features, out_features: widths of every expert.
    top_k: experts per token (``1 <= top_k <= num_experts``).
    renormalize: renormalise the kept gate weights to sum to 1 per token;
      default ``top_k > 1`` (see above).
    dispatch: ``"auto"``, ``"einsum"`` or ``"grouped"`` (see above).
    use_bias: experts have a bias.
    param_dtype: parameter dtype.
    rngs: ``nnx.Rngs`` (required).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jscorch import nn
    >>> moe = nn.MoE(4, 8, 6, top_k=2, rngs=nnx.Rngs(0))
    >>> moe.gate.kernel.shape, moe.kernel.shape, moe.bias.shape
    ((8, 4), (4, 8, 6), (4, 6))
    >>> x = jnp.ones((5, 8))
    >>> moe.gates(x)[0]
    SparseArray(float32[5, 4], format=CSR, nse=10)
    >>> y, aux = moe(x)
    >>> y.shape, aux.shape
    ((5, 6), ())
  """

  def __init__(self, num_experts: int, in_features: int, out_features: int, *, top_k: int = 2,
               renormalize: bool | None = None, use_bias: bool = True, kernel_init=lecun_init,
               bias_init=zeros_init, param_dtype=jnp.float32, dispatch: str = "auto",
               rngs: nnx.Rngs | None = None):
    name = "MoE"
    rngs = _util.require_rngs(rngs, name)
    if dispatch not in DISPATCHES:
      raise ValueError(f"{name}: unknown dispatch; got dispatch={dispatch!r}, expected one of "
                       f"{DISPATCHES}.")
    self.dispatch = dispatch
    self.num_experts = _util.check_positive(num_experts, "num_experts", name)
    self.in_features = _util.check_positive(in_features, "in_features", name)
    self.out_features = _util.check_positive(out_features, "out_features", name)
    _util.check_positive(top_k, "top_k", name)
    if top_k > num_experts:
      raise ValueError(f"{name}: top_k must be at most num_experts; got top_k={top_k}, "
                       f"num_experts={num_experts}.")
    self.top_k = top_k
    self.renormalize = top_k > 1 if renormalize is None else bool(renormalize)
    self.use_bias = use_bias
    self.gate = nnx.Linear(in_features, num_experts, use_bias=False, param_dtype=param_dtype,
                           rngs=rngs)
    kernel, bias = _util.draw(
        rngs, (kernel_init, (num_experts, in_features, out_features), param_dtype),
        (bias_init, (num_experts, out_features), param_dtype) if use_bias else None)
    self.kernel = nnx.Param(kernel)
    self.bias = nnx.Param(bias) if use_bias else nnx.data(None)

  def _check(self, x):
    name = "MoE"
    if is_sparse(x) or not hasattr(x, "shape"):
      raise TypeError(f"{name}: x must be a dense array [..., in_features]; got "
                      f"{type(x).__name__}.")
    if x.ndim < 1 or x.shape[-1] != self.in_features:
      raise ValueError(f"{name}: wrong feature width: x.shape={tuple(x.shape)}, expected "
                       f"[..., in_features={self.in_features}].")

  def gates(self, x) -> tuple[SparseArray, jax.Array]:
    """The sparse gate ``G`` `[tokens, num_experts]` and the router probabilities.

    ``x`` `[..., in_features]` is flattened to `[tokens, in_features]`. ``G`` is
    CSR with ``top_k`` entries per row, expert ids sorted within a row.
    """
    self._check(x)
    return _gates(x.reshape(-1, self.in_features), self.gate.kernel[...], self.top_k,
                  self.renormalize)

  def load_balancing_loss(self, gate: SparseArray, probs: jax.Array) -> jax.Array:
    """Switch's ``E * sum_e f_e P_e`` from :meth:`gates`' outputs (1 when balanced)."""
    return _load_balancing_loss(gate, probs, self.top_k)

  def __call__(self, x) -> tuple[jax.Array, jax.Array]:
    """``x`` `[..., in_features]` → ``(y, aux_loss)`` with ``y`` `[..., out_features]`."""
    self._check(x)
    y, aux = _moe(x.reshape(-1, self.in_features), self.gate.kernel[...], self.kernel[...],
                  self.bias[...] if self.use_bias else None, self.top_k, self.renormalize,
                  self.dispatch)
    return y.reshape(x.shape[:-1] + (self.out_features,)), aux


# Forwards are jitted functions of arrays and static options (see graph_conv.py).
@functools.partial(jax.jit, static_argnums=(2, 3))
def _gates(tokens, gate_kernel, top_k, renormalize):
  dtype = _util.compute_dtype(tokens, gate_kernel)
  logits = jnp.matmul(tokens.astype(dtype), gate_kernel.astype(dtype),
                      precision=jax.lax.Precision.HIGHEST)
  probs = jax.nn.softmax(logits, axis=-1)
  _, experts = jax.lax.top_k(jax.lax.stop_gradient(logits), top_k)
  experts = jnp.sort(experts, axis=-1).astype(jnp.int32)       # CSR: columns sorted
  if renormalize:                                              # Mixtral / GShard
    weights = jax.nn.softmax(jnp.take_along_axis(logits, experts, axis=-1), axis=-1)
  else:                                                        # Switch: p_e itself
    weights = jnp.take_along_axis(probs, experts, axis=-1)
  t, num_experts = logits.shape
  pos = jnp.arange(t + 1, dtype=jnp.int32) * top_k
  gate = SparseArray.from_buffers(weights.reshape(-1), (pos, experts.reshape(-1)),
                                  shape=(t, num_experts), format=CSR, check=False)
  return gate, probs


def _load_balancing_loss(gate, probs, top_k):
  ones = gate.with_data(jnp.ones_like(jax.lax.stop_gradient(gate.data)))
  f = einsum("te->e", ones) / (probs.shape[0] * top_k)     # fraction of assignments
  p = jnp.mean(probs, axis=0)                              # mean router probability
  return probs.shape[1] * jnp.sum(f * p)


def _grouped(gate, tokens, kernel, top_k):
  """``y[t] = sum_e G[t, e] tokens[t] @ kernel[e]`` as one grouped matmul: the
  ``tokens * top_k`` (token, expert) pairs of ``gate`` (CSR, ``top_k`` per row) sorted by
  expert, a grouped matmul (XLA's ragged dot) of their token rows `[pairs, in]` with ``kernel``
  `[experts, in, out]` over the expert groups, then each result weighted by its gate value
  and summed into its token's row."""
  t, num_experts = gate.shape
  experts = gate.indices[1]
  order = jnp.argsort(experts, stable=True)
  rows = order // top_k                           # pos = arange(t + 1) * top_k
  sizes = jnp.zeros(num_experts, jnp.int32).at[experts].add(1)
  products = grouped_matmul(tokens[rows], kernel, sizes)
  weighted = products * gate.data[order][:, None]
  return jax.ops.segment_sum(weighted, rows, num_segments=t)


def _dispatch(gate, tokens, kernel, top_k, dispatch):
  einsum_path = lambda: einsum("te,ti,eio->to", gate, tokens, kernel)
  grouped_path = lambda: _grouped(gate, tokens, kernel, top_k)
  if dispatch == "einsum":
    return einsum_path()
  if dispatch == "grouped":
    return grouped_path()
  return jax.lax.platform_dependent(cpu=einsum_path, default=grouped_path)


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _moe(tokens, gate_kernel, kernel, bias, top_k, renormalize, dispatch):
  gate, probs = _gates(tokens, gate_kernel, top_k, renormalize)
  dtype = gate.dtype
  tokens = tokens.astype(dtype)
  kernel = kernel.astype(dtype)
  if bias is not None:         # fold the bias in: [x, 1] @ [kernel; bias]
    tokens = jnp.concatenate([tokens, jnp.ones((tokens.shape[0], 1), dtype)], axis=1)
    kernel = jnp.concatenate([kernel, bias.astype(dtype)[:, None, :]], axis=1)
  y = _dispatch(gate, tokens, kernel, top_k, dispatch)
  return y, _load_balancing_loss(gate, probs, top_k)
