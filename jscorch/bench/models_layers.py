"""Model workloads: jscorch's sparse layers inside small models, against the models they replace.

Rows (keys for ``python -m jscorch bench --models --only``):
  * ``autoencoder``: an MLP autoencoder 784-512-784 whose two weights are magnitude-pruned
    from one dense initialisation, with ``nn.SparseLinear`` against the same pruned model
    with dense weights and against ``torch.sparse`` CSR weights; inference and a training
    step (loss and gradients w.r.t. every stored weight and bias);
  * ``attention``: a pre-LayerNorm transformer block whose attention is
    ``nn.SparseAttention`` on a BigBird or Longformer-style mask (:data:`MASKS`), against
    dense masked attention in JAX and torch; forward, and forward + backward (gradients
    w.r.t. the input and the four attention projection kernels);
  * ``MoE``: ``nn.MoE`` (a sparse top-k gate dispatched by ``js.einsum``) against dense
    dispatch (every expert on every token, weighted by a dense gate with zeros off the
    top-k) and a grouped matmul (tokens sorted by expert, ``jax.lax.ragged_dot``); forward,
    and forward + backward (gradients w.r.t. the expert kernels, biases and the router).

Every reference is float64 and computed without jscorch: numpy, or plain ``jnp`` code run
under ``jax.enable_x64``. Every contender gets the same parameters.

Example:
  >>> from jscorch.bench import models_layers, runner
  >>> wl = models_layers.autoencoder(0.9, batch=4, dims=(16, 8), train=True)
  >>> [c.name for c in wl.contenders][:2]
  ['jscorch', 'dense']
  >>> ours = wl.contenders[0]
  >>> runner.relative_error(ours.to_numpy(ours.run()), wl.reference) < 1e-5
  True
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jscorch.bench.workloads import Contender, Workload, _torch
from jscorch.nn import MoE, SparseAttention, SparseLinear, bigbird_mask

#: Keys for ``--only``.
ROWS = ("autoencoder", "attention", "MoE")

#: The benchmark sizes.
FULL = dict(
    autoencoder=dict(sparsities=(0.5, 0.9, 0.95, 0.99), batch=256, dims=(784, 512)),
    attention=dict(masks=("bigbird", "longformer"), lengths=(512, 1024, 2048, 4096),
                   features=128, heads=4),
    moe=dict(experts=(8, 16, 32, 64, 128), top_k=(1, 2), tokens=4096, features=256))

#: Small sizes: every workload of this module, compiles included, in well under a minute.
QUICK = dict(
    autoencoder=dict(sparsities=(0.9, 0.99), batch=256, dims=(784, 512)),
    attention=dict(masks=("bigbird",), lengths=(512,), features=128, heads=4),
    moe=dict(experts=(16,), top_k=(2,), tokens=1024, features=256))

#: ``bigbird_mask`` arguments of the attention masks (Longformer: local window and global
#: tokens, no random links). At L = 4096 BigBird keeps 5.4 % and Longformer 6.9 % of the
#: entries; each size is capped at ``length // 4`` so short test sequences keep a pattern.
MASKS = {"bigbird": dict(window=64, num_global=16, num_random=64),
         "longformer": dict(window=128, num_global=16, num_random=0)}

_NO_TORCH = "not installed (pip install torch==2.13.0)"


def build_workloads(quick: bool, only: set | None) -> list:
  """Zero-argument callables, each building one :class:`Workload` of the rows in ``only``
  (all of :data:`ROWS` for None), at :data:`QUICK` or :data:`FULL` sizes."""
  size = QUICK if quick else FULL
  ae, at, mo = size["autoencoder"], size["attention"], size["moe"]
  specs = [("autoencoder", functools.partial(autoencoder, s, ae["batch"], ae["dims"], train))
           for s in ae["sparsities"] for train in (False, True)]
  specs += [("attention", functools.partial(attention_block, mask, length, at["features"],
                                            at["heads"], train))
            for mask in at["masks"] for length in at["lengths"] for train in (False, True)]
  specs += [("MoE", functools.partial(moe, e, k, mo["tokens"], mo["features"], train))
            for k in mo["top_k"] for e in mo["experts"] for train in (False, True)]
  return [make for key, make in specs if only is None or key in only]


# -- shared helpers -----------------------------------------------------------------------
def _normal(seed, shape, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _leaves(result) -> tuple:
  """A (nested) tuple of arrays as a flat tuple of numpy arrays, in order."""
  return tuple(np.asarray(a) for a in jax.tree.leaves(result))


def _float64(tree):
  """``tree`` with float64 ``jnp`` leaves (call inside ``jax.enable_x64(True)``)."""
  return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), tree)


def _torch_or_reason(skipped: dict, name: str):
  """torch, or None after recording why ``name`` is skipped."""
  torch = _torch()
  if torch is None:
    skipped[name] = _NO_TORCH
  return torch


def _nnx_contender(name, module, forward, loss, pick, inputs, train):
  """``module`` split into its ``nnx.Param`` state and the rest, merged back inside ``jit``.

  ``forward(module, *inputs)`` gives the checked output; with ``train``, the step is
  ``loss(module, *inputs)`` and its gradients w.r.t. the Param state ``g`` and
  ``inputs[0]``, returned as ``(loss, *pick(g, d_input))``.
  """
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  if not train:
    run = jax.jit(lambda p, r, xs: forward(nnx.merge(graphdef, p, r), *xs))
    return Contender(name, lambda: run(params, rest, inputs))

  def step(p, r, xs):
    value, grads = jax.value_and_grad(
        lambda p, x: loss(nnx.merge(graphdef, p, r), x, *xs[1:]), argnums=(0, 1))(p, xs[0])
    return value, pick(*grads)
  run = jax.jit(step)
  return Contender(name, lambda: run(params, rest, inputs), _leaves)


# -- weight-sparse autoencoder ------------------------------------------------------------
@dataclasses.dataclass
class _Pruned:
  """One magnitude-pruned layer: the SparseLinear and the same weight dense."""
  layer: SparseLinear
  weight: np.ndarray        # [in, out], zero off the pattern
  bias: np.ndarray          # [out]
  rows: np.ndarray          # the pattern, row-major: layer.kernel[i] is weight[rows[i], cols[i]]
  cols: np.ndarray


def _pruned(n_in: int, n_out: int, density: float, seed: int) -> _Pruned:
  linear = nnx.Linear(n_in, n_out, rngs=nnx.Rngs(seed))
  linear.bias[...] = jnp.asarray(_normal(seed, (n_out,), 0.1))
  layer = SparseLinear.from_dense(linear, density=density)
  pos, crd = (np.asarray(b) for b in layer.kernel_pattern.get_value())
  values = np.asarray(layer.kernel[...])
  rows, cols = np.repeat(np.arange(n_in), np.diff(pos)), crd[:len(values)]
  weight = np.zeros((n_in, n_out), np.float32)
  weight[rows, cols] = values
  return _Pruned(layer, weight, np.asarray(layer.bias[...]), rows, cols)


class _Autoencoder(nnx.Module):
  """``decoder(relu(encoder(x)))``."""

  def __init__(self, encoder: nnx.Module, decoder: nnx.Module):
    self.encoder, self.decoder = encoder, decoder

  def __call__(self, x):
    return self.decoder(jax.nn.relu(self.encoder(x)))


def _mse(y, x):
  return jnp.mean((y - x) ** 2)


def _autoencoder_reference(x, enc: _Pruned, dec: _Pruned, train: bool) -> tuple:
  """float64 ``y`` (inference) or ``(loss, d enc values, d enc bias, d dec values, d dec
  bias)`` of ``loss = mean((y - x)^2)``, in numpy."""
  x, w1, b1, w2, b2 = (np.asarray(a, np.float64)
                       for a in (x, enc.weight, enc.bias, dec.weight, dec.bias))
  z = x @ w1 + b1
  h = np.maximum(z, 0)
  y = h @ w2 + b2
  if not train:
    return (y,)
  dy = 2 * (y - x) / y.size
  dz = (dy @ w2.T) * (z > 0)
  return (np.mean((y - x) ** 2), (x.T @ dz)[enc.rows, enc.cols], dz.sum(0),
          (h.T @ dy)[dec.rows, dec.cols], dy.sum(0))


def _jscorch_autoencoder(enc: _Pruned, dec: _Pruned, x, train) -> Contender:
  def pick(g, _):
    return tuple(g[layer][name][...] for layer in ("encoder", "decoder")
                 for name in ("kernel", "bias"))
  return _nnx_contender("jscorch", _Autoencoder(enc.layer, dec.layer), lambda m, x: m(x),
                        lambda m, x: _mse(m(x), x), pick, (x,), train)


def _dense_forward(params, x):
  (w1, b1), (w2, b2) = params
  return jax.nn.relu(x @ w1 + b1) @ w2 + b2


def _dense_autoencoder(enc: _Pruned, dec: _Pruned, x, train) -> Contender:
  """The pruned model with dense weights; its weight gradients are read at the pattern."""
  params = tuple((jnp.asarray(p.weight), jnp.asarray(p.bias)) for p in (enc, dec))
  if not train:
    run = jax.jit(_dense_forward)
    return Contender("dense", lambda: run(params, x))
  run = jax.jit(jax.value_and_grad(lambda p, x: _mse(_dense_forward(p, x), x)))

  def flat(r):
    value, ((g1, d1), (g2, d2)) = r
    return (np.asarray(value), np.asarray(g1)[enc.rows, enc.cols], np.asarray(d1),
            np.asarray(g2)[dec.rows, dec.cols], np.asarray(d2))
  return Contender("dense", lambda: run(params, x), flat)


def _torch_csr_transpose(torch, p: _Pruned):
  """``W^T`` `[out, in]` as a torch CSR tensor (torch's ``Linear`` layout) and ``order``:
  its stored value ``k`` is ``p.layer.kernel[order[k]]``."""
  order = np.lexsort((p.rows, p.cols))            # by column, then row
  n_in, n_out = p.weight.shape
  crow = np.concatenate([[0], np.cumsum(np.bincount(p.cols, minlength=n_out))])
  values = p.weight[p.rows, p.cols][order]
  t = torch.sparse_csr_tensor(torch.from_numpy(crow.astype(np.int64)),
                              torch.from_numpy(p.rows[order].astype(np.int64)),
                              torch.from_numpy(values), size=(n_out, n_in))
  return t.requires_grad_(), order


def _torch_autoencoder(torch, enc: _Pruned, dec: _Pruned, x, train) -> Contender:
  """CSR weights and ``torch.sparse.mm`` on transposed activations (``h^T = W^T x^T``).

  Like every contender it takes ``x`` `[batch, in]` and gives ``y`` `[batch, in]`: the
  transposes are strided views (torch copies where its kernels need it, inside the timed
  call)."""
  (w1, o1), (w2, o2) = _torch_csr_transpose(torch, enc), _torch_csr_transpose(torch, dec)
  b1, b2 = (torch.from_numpy(p.bias[:, None].copy()).requires_grad_() for p in (enc, dec))
  xs = torch.from_numpy(np.asarray(x))

  def forward():
    ht = torch.relu(torch.sparse.mm(w1, xs.T) + b1)
    return (torch.sparse.mm(w2, ht) + b2).T

  if not train:
    def infer():
      with torch.no_grad():
        return forward()
    return Contender("torch.sparse", infer, lambda r: (r.numpy(),))

  def step():
    for t in (w1, b1, w2, b2):
      t.grad = None
    value = (forward() - xs).pow(2).mean()
    value.backward()
    return (value.detach().numpy(), w1.grad.values().numpy(), b1.grad.numpy()[:, 0],
            w2.grad.values().numpy(), b2.grad.numpy()[:, 0])

  def unpermute(values, order):
    out = np.empty_like(values)
    out[order] = values
    return out

  def flat(r):
    value, g1, d1, g2, d2 = r
    return np.asarray(value), unpermute(g1, o1), d1, unpermute(g2, o2), d2
  return Contender("torch.sparse", step, flat)


def autoencoder(sparsity: float, batch: int = 256, dims=(784, 512),
                train: bool = False) -> Workload:
  """A weight-sparse MLP autoencoder ``dims[0]-dims[1]-dims[0]`` (ReLU hidden layer).

  Both weights are magnitude-pruned to ``sparsity`` from one dense ``nnx.Linear``
  initialisation (biases random). Inference checks ``y`` `[batch, dims[0]]`; the
  training step checks ``loss = mean((y - x)^2)`` and its gradients w.r.t. both layers'
  stored values `[nse]` and biases.

  Args:
    sparsity: fraction of each weight pruned, in ``[0, 1)``.
    batch: rows of ``x`` `[batch, dims[0]]`.
    dims: ``(input width, hidden width)``.
    train: time a training step instead of inference.

  Returns:
    A :class:`Workload` with the contenders ``jscorch``, ``dense`` and ``torch.sparse``
    (or a ``skipped`` entry without torch).
  """
  n, hidden = dims
  density = 1.0 - sparsity
  enc, dec = _pruned(n, hidden, density, seed=10), _pruned(hidden, n, density, seed=11)
  x_host = _normal(12, (batch, n))
  x = jnp.asarray(x_host)
  contenders = [_jscorch_autoencoder(enc, dec, x, train), _dense_autoencoder(enc, dec, x, train)]
  skipped = {}
  torch = _torch_or_reason(skipped, "torch.sparse")
  if torch is not None:
    contenders.append(_torch_autoencoder(torch, enc, dec, x_host, train))
  name = "Autoencoder train step" if train else "Autoencoder inference"
  data = (f"MLP {n}-{hidden}-{n}, batch {batch}, weights {sparsity:.0%} sparse "
          f"(nse {len(enc.rows):,} + {len(dec.rows):,})")
  return Workload(name, data, _autoencoder_reference(x_host, enc, dec, train), contenders,
                  skipped)


# -- sparse-attention transformer block ---------------------------------------------------
def _mask(kind: str, length: int):
  """The ``kind`` mask of :data:`MASKS` for ``length`` (every row holds its diagonal)."""
  sizes = {k: min(v, length // 4) for k, v in MASKS[kind].items()}
  return bigbird_mask(length, seed=0, **sizes), sizes


def _dense_mask(mask) -> np.ndarray:
  """A CSR mask's stored positions as a dense boolean `[L, L]` array (numpy)."""
  pos, crd = (np.asarray(b) for b in mask.indices)
  out = np.zeros(mask.shape, bool)
  out[np.repeat(np.arange(mask.shape[0]), np.diff(pos)), crd[:pos[-1]]] = True
  return out


def _block_params(heads: int, features: int, seed: int):
  """A SparseAttention and every block parameter as numpy: ``ln1``, ``ln2`` (scale, bias),
  ``attn`` (``(kernel, bias)`` of query, key, value, out, the SparseAttention's own) and
  ``mlp`` (`[F, 4F]` and `[4F, F]` layers)."""
  attn = SparseAttention(heads, features, rngs=nnx.Rngs(seed))
  linears = (attn.query, attn.key, attn.value, attn.out)
  for i, lin in enumerate(linears):
    lin.bias[...] = jnp.asarray(_normal(seed + 1 + i, (features,), 0.1))
  f, wide = features, 4 * features
  p = dict(ln1=(1 + _normal(seed + 5, (f,), 0.1), _normal(seed + 6, (f,), 0.1)),
           ln2=(1 + _normal(seed + 7, (f,), 0.1), _normal(seed + 8, (f,), 0.1)),
           attn=tuple((np.asarray(lin.kernel[...]), np.asarray(lin.bias[...]))
                      for lin in linears),
           mlp=((_normal(seed + 9, (f, wide), f ** -0.5), _normal(seed + 10, (wide,), 0.1)),
                (_normal(seed + 11, (wide, f), wide ** -0.5), _normal(seed + 12, (f,), 0.1))))
  return attn, p


def _layer_norm(x, scale_bias, eps=1e-6):
  scale, bias = scale_bias
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + eps) * scale + bias


def _block(p, x, attend):
  """``h = x + attend(LN1(x))``, then ``h + MLP(LN2(h))`` (4x wide, exact GELU)."""
  h = x + attend(_layer_norm(x, p["ln1"]))
  (w1, b1), (w2, b2) = p["mlp"]
  return h + jax.nn.gelu(_layer_norm(h, p["ln2"]) @ w1 + b1, approximate=False) @ w2 + b2


def _dense_attention(proj, y, mask, heads):
  """Multi-head attention with full `[heads, L, L]` scores, ``-inf`` outside ``mask``."""
  length = y.shape[0]
  q, k, v = ((y @ w + b).reshape(length, heads, -1) for w, b in proj[:3])
  scores = jnp.einsum("ihd,jhd->hij", q, k) / np.sqrt(q.shape[-1])
  weights = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
  wo, bo = proj[3]
  return jnp.einsum("hij,jhd->ihd", weights, v).reshape(length, -1) @ wo + bo


def _with_kernels(p, kernels):
  return dict(p, attn=tuple((k, b) for k, (_, b) in zip(kernels, p["attn"])))


def _dense_block_loss(p, mask, cot, heads):
  """``(x, kernels) -> <block(x), cot>`` with dense masked attention."""
  def loss(x, kernels):
    q = _with_kernels(p, kernels)
    return jnp.vdot(_block(q, x, lambda y: _dense_attention(q["attn"], y, mask, heads)), cot)
  return loss


def _attention_reference(p, x, mask, cot, heads, train) -> tuple:
  """float64 ``out``, or ``(loss, dx, dW_q, dW_k, dW_v, dW_out)``, in plain ``jnp``."""
  with jax.enable_x64(True):
    p, x, cot = _float64((p, x, cot))
    mask = jnp.asarray(mask)
    if not train:
      return (np.asarray(_block(p, x, lambda y: _dense_attention(p["attn"], y, mask, heads))),)
    kernels = tuple(k for k, _ in p["attn"])
    loss = _dense_block_loss(p, mask, cot, heads)
    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(x, kernels)
    return _leaves((value, grads))


def _jscorch_block(attn, p, x, mask, cot, train) -> Contender:
  """The block with ``nn.SparseAttention`` (its projections are the block's ``attn``)."""
  def forward(m, x, mask, p, cot):
    return _block(p, x, lambda y: m(y, mask))

  def loss(m, x, mask, p, cot):
    return jnp.vdot(forward(m, x, mask, p, cot), cot)

  def pick(g, dx):
    return dx, tuple(g[name]["kernel"][...] for name in ("query", "key", "value", "out"))
  return _nnx_contender("jscorch", attn, forward, loss, pick, (x, mask, p, cot), train)


def _dense_block(p, x, mask, cot, heads, train) -> Contender:
  if not train:
    run = jax.jit(lambda p, x, mask: _block(
        p, x, lambda y: _dense_attention(p["attn"], y, mask, heads)))
    return Contender("dense masked", lambda: run(p, x, mask))
  kernels = tuple(k for k, _ in p["attn"])
  run = jax.jit(lambda p, x, kernels, mask, cot: jax.value_and_grad(
      _dense_block_loss(p, mask, cot, heads), argnums=(0, 1))(x, kernels))
  return Contender("dense masked", lambda: run(p, x, kernels, mask, cot), _leaves)


def _torch_block(torch, p, x, mask, cot, heads, train) -> Contender:
  """The block in torch: ``scaled_dot_product_attention`` with a boolean mask."""
  fn = torch.nn.functional
  t = jax.tree.map(lambda a: torch.from_numpy(np.array(a)), p)
  kernels = [w.requires_grad_(train) for w, _ in t["attn"]]
  tx = torch.from_numpy(np.array(x)).requires_grad_(train)
  tmask, tcot = torch.from_numpy(mask), torch.from_numpy(np.array(cot))
  length, features = x.shape

  def forward():
    y = fn.layer_norm(tx, (features,), *t["ln1"], eps=1e-6)
    q, k, v = ((y @ w + b).reshape(length, heads, -1).transpose(0, 1)
               for w, (_, b) in zip(kernels[:3], t["attn"]))
    o = fn.scaled_dot_product_attention(q, k, v, attn_mask=tmask)
    h = tx + o.transpose(0, 1).reshape(length, -1) @ kernels[3] + t["attn"][3][1]
    (w1, b1), (w2, b2) = t["mlp"]
    return h + fn.gelu(fn.layer_norm(h, (features,), *t["ln2"], eps=1e-6) @ w1 + b1) @ w2 + b2

  if not train:
    def infer():
      with torch.no_grad():
        return forward()
    return Contender("torch", infer, lambda r: (r.numpy(),))

  def step():
    for w in (tx, *kernels):
      w.grad = None
    value = (forward() * tcot).sum()
    value.backward()
    return value.detach().numpy(), tx.grad.numpy(), *(w.grad.numpy() for w in kernels)
  return Contender("torch", step, lambda r: tuple(np.asarray(a) for a in r))


def attention_block(mask: str = "bigbird", length: int = 4096, features: int = 128,
                    heads: int = 4, train: bool = False) -> Workload:
  """A pre-LayerNorm transformer block on one sequence `[length, features]` whose attention
  is restricted to ``mask`` (``"bigbird"`` or ``"longformer"``, see :data:`MASKS`).

  Forward checks the block's output `[length, features]`; forward + backward checks
  ``loss = <out, c>`` (``c`` a fixed random cotangent) and its gradients w.r.t. ``x`` and
  the query, key, value and output projection kernels.

  Args:
    mask: a key of :data:`MASKS`; ``data`` names its sizes and density.
    length: sequence length ``L``.
    features: model width (the MLP is 4x wider).
    heads: attention heads; must divide ``features``.
    train: time forward + backward instead of the forward.

  Returns:
    A :class:`Workload` with the contenders ``jscorch``, ``dense masked`` and ``torch``
    (or a ``skipped`` entry without torch).
  """
  sparse_mask, sizes = _mask(mask, length)
  attn, p_host = _block_params(heads, features, seed=20)
  x_host, cot_host = _normal(30, (length, features)), _normal(31, (length, features))
  dense_host = _dense_mask(sparse_mask)
  p, x, cot = jax.tree.map(jnp.asarray, (p_host, x_host, cot_host))
  dense_mask = jnp.asarray(dense_host)
  contenders = [_jscorch_block(attn, p, x, sparse_mask, cot, train),
                _dense_block(p, x, dense_mask, cot, heads, train)]
  skipped = {}
  torch = _torch_or_reason(skipped, "torch")
  if torch is not None:
    contenders.append(_torch_block(torch, p_host, x_host, dense_host, cot_host, heads, train))
  reference = _attention_reference(p_host, x_host, dense_host, cot_host, heads, train)
  name = "Attention block fwd+bwd" if train else "Attention block fwd"
  data = (f"{mask} (window ±{sizes['window']}, {sizes['num_global']} global, "
          f"{sizes['num_random']} random) L={length}, density {dense_host.mean():.1%}; "
          f"{features} features, {heads} heads")
  return Workload(name, data, reference, contenders, skipped)


# -- mixture of experts -------------------------------------------------------------------
def _gate_weights(logits, experts, top_k):
  """``nn.MoE``'s weights of the kept ``experts``: the router probability itself for
  top-1 (Switch), a softmax over the kept logits for top-k > 1."""
  if top_k == 1:
    return jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), experts, axis=-1)
  return jax.nn.softmax(jnp.take_along_axis(logits, experts, axis=-1), axis=-1)


def _router(params, x, top_k):
  """``(experts, weights)`` `[tokens, top_k]` from the router kernel ``params[0]``."""
  logits = jnp.matmul(x, params[0], precision=jax.lax.Precision.HIGHEST)
  experts = jax.lax.top_k(jax.lax.stop_gradient(logits), top_k)[1]
  return experts, _gate_weights(logits, experts, top_k)


def _dense_dispatch(params, x, top_k):
  """Every expert on every token, weighted by a dense `[tokens, experts]` gate."""
  _, kernel, bias = params
  experts, weights = _router(params, x, top_k)
  gate = jnp.einsum("tk,tke->te", weights, jax.nn.one_hot(experts, kernel.shape[0], dtype=x.dtype))
  return jnp.einsum("te,ti,eio->to", gate, x, kernel) + gate @ bias


def _grouped(params, x, top_k):
  """Tokens sorted by expert, one ``ragged_dot`` over the groups, unsorted and summed."""
  _, kernel, bias = params
  experts, weights = _router(params, x, top_k)
  flat = experts.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  sizes = jnp.bincount(flat, length=kernel.shape[0]).astype(jnp.int32)
  ys = jax.lax.ragged_dot(x[order // top_k], kernel, sizes) + bias[flat[order]]
  ys = ys * weights.reshape(-1)[order, None]
  return ys[jnp.argsort(order)].reshape(x.shape[0], top_k, -1).sum(axis=1)


def _routable_tokens(seed, tokens, gate_kernel, top_k, margin=1e-3) -> np.ndarray:
  """`[tokens, features]` float32 inputs whose float64 router logits put the ``top_k``
  experts at least ``margin`` above the rest (rows redrawn until they do), so float32
  rounding cannot change any contender's routing."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((tokens, gate_kernel.shape[0])).astype(np.float32)
  while True:
    logits = np.sort(x.astype(np.float64) @ gate_kernel.astype(np.float64), axis=1)
    close = logits[:, -top_k] - logits[:, -top_k - 1] < margin
    if not close.any():
      return x
    x[close] = rng.standard_normal((int(close.sum()), x.shape[1])).astype(np.float32)


def _moe_reference(params, x, cot, top_k, train) -> tuple:
  """float64 ``y``, or ``(loss, d kernel, d bias, d router kernel)`` of ``loss = <y, cot>``:
  a loop over experts in numpy (top-k from the float64 logits), gradients by hand."""
  gate_kernel, kernel, bias, x, cot = (np.asarray(a, np.float64)
                                       for a in (*params, x, cot))
  logits = x @ gate_kernel
  experts = np.argsort(-logits, axis=1)[:, :top_k]
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  kept = np.exp(np.take_along_axis(logits, experts, 1))
  weights = np.take_along_axis(probs, experts, 1) if top_k == 1 else \
      kept / kept.sum(1, keepdims=True)
  y, d_kernel, d_bias = np.zeros_like(cot), np.zeros_like(kernel), np.zeros_like(bias)
  d_weights = np.zeros_like(weights)
  for e in range(kernel.shape[0]):
    t, slot = np.nonzero(experts == e)
    out = x[t] @ kernel[e] + bias[e]
    y[t] += weights[t, slot][:, None] * out
    d_out = weights[t, slot][:, None] * cot[t]
    d_kernel[e], d_bias[e] = x[t].T @ d_out, d_out.sum(0)
    d_weights[t, slot] = np.sum(cot[t] * out, axis=1)
  if not train:
    return (y,)
  d_logits = np.zeros_like(logits)
  if top_k == 1:      # w = p_e: d logits = d_w * w * (onehot_e - p)
    d_logits -= (d_weights * weights) * probs
    np.put_along_axis(d_logits, experts, np.take_along_axis(d_logits, experts, 1) +
                      d_weights * weights, 1)
  else:               # w = softmax(kept logits)
    d_kept = weights * (d_weights - np.sum(weights * d_weights, 1, keepdims=True))
    np.put_along_axis(d_logits, experts, d_kept, 1)
  return np.sum(y * cot), d_kernel, d_bias, x.T @ d_logits


def _plain_moe(name, impl, params, x, cot, top_k, train) -> Contender:
  if not train:
    run = jax.jit(functools.partial(impl, top_k=top_k))
    return Contender(name, lambda: run(params, x))

  def step(params, x, cot):
    value, (d_gate, d_kernel, d_bias) = jax.value_and_grad(
        lambda p: jnp.vdot(impl(p, x, top_k), cot))(params)
    return value, d_kernel, d_bias, d_gate
  run = jax.jit(step)
  return Contender(name, lambda: run(params, x, cot), _leaves)


def _jscorch_moe(layer: MoE, x, cot, train) -> Contender:
  """``nn.MoE``; its auxiliary loss is left out (the other contenders have none)."""
  def pick(g, _):
    return g["kernel"][...], g["bias"][...], g["gate"]["kernel"][...]
  return _nnx_contender("jscorch", layer, lambda m, x, cot: m(x)[0],
                        lambda m, x, cot: jnp.vdot(m(x)[0], cot), pick, (x, cot), train)


def moe(num_experts: int, top_k: int, tokens: int = 4096, features: int = 256,
        train: bool = False) -> Workload:
  """A mixture of ``num_experts`` linear experts `[features, features]` with top-k routing
  (top-1: Switch, the router probability; top-2: renormalised), on `[tokens, features]`.

  Forward checks ``y``; forward + backward checks ``loss = <y, c>`` (``c`` a fixed random
  cotangent, no auxiliary loss) and its gradients w.r.t. the expert kernels `[E, F, F]`,
  biases `[E, F]` and the router kernel `[F, E]` (through the gate weights). The inputs
  keep every near-tie of the router away (:func:`_routable_tokens`), so all contenders
  route every token alike.

  Args:
    num_experts: ``E``.
    top_k: experts per token (1: Switch, router probability; more: renormalised).
    tokens, features: the shape of ``x``; every expert is `[features, features]`.
    train: time forward + backward instead of the forward.

  Returns:
    A :class:`Workload` with the contenders ``jscorch`` (``nn.MoE``), ``dense dispatch``
    and ``ragged_dot``.
  """
  layer = MoE(num_experts, features, features, top_k=top_k, rngs=nnx.Rngs(40))
  layer.bias[...] = jnp.asarray(_normal(41, (num_experts, features), 0.1))
  host = tuple(np.asarray(a[...]) for a in (layer.gate.kernel, layer.kernel, layer.bias))
  x_host = _routable_tokens(42, tokens, host[0], top_k)
  cot_host = _normal(43, (tokens, features))
  params, x, cot = jax.tree.map(jnp.asarray, (host, x_host, cot_host))
  contenders = [_jscorch_moe(layer, x, cot, train),
                _plain_moe("dense dispatch", _dense_dispatch, params, x, cot, top_k, train),
                _plain_moe("ragged_dot", _grouped, params, x, cot, top_k, train)]
  kind = "top-1 (Switch)" if top_k == 1 else f"top-{top_k} (renormalised)"
  name = "MoE fwd+bwd" if train else "MoE fwd"
  data = f"{kind} of {num_experts} experts, {tokens} tokens x {features} features"
  return Workload(name, data, _moe_reference(host, x_host, cot_host, top_k, train), contenders)
