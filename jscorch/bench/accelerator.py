"""The accelerator benchmark (``python -m jscorch bench --platform gpu``): jscorch's kernels on
a GPU or TPU against what users would pick there, on the same data, in one run.

Workloads (sizes ``full`` / ``quick``; every result checked against float64 numpy):

* ``SpMM`` / ``SDDMM`` on an R-MAT and a uniform matrix (131,072², about 2.1 M entries,
  width 64);
* ``BSR-SpMM``: ``A @ X`` with ``A`` BSR at block densities 5, 10, 25 and 50 % (4096²,
  32×32 blocks, width 512), against the same matrix dense and in CSR;
* ``GCN``: one layer ``relu(A X W)`` forward + backward (gradients for ``W``, ``X`` and
  ``A``'s values), on the R-MAT graph;
* ``block-attention``: ``nn.SparseAttention`` on a BigBird block mask (L = 4096, 64×64
  blocks) against dense masked attention;
* ``MoE``: ``nn.MoE`` (top-2 of 16 experts: a grouped matmul on accelerators) against the
  dense dispatch (every expert on every token).

Contenders: ``jscorch`` (``lowering="auto"``: the Pallas kernels on a GPU or TPU),
``jscorch-portable`` (the same function traced with ``lowering="portable"``), BCOO, BCSR
(:func:`run` turns ``jax_bcoo_cusparse_lowering`` on: cuSPARSE on CUDA), ``dense`` (where the
operands fit: :data:`DENSE_LIMIT`) and torch on CUDA when it is installed with a GPU. On
the CPU (``--platform cpu``, with ``--quick`` in well under a minute) the same workloads
check the harness; jscorch then runs its C kernels.

Example:
  >>> from jscorch.bench import accelerator
  >>> accelerator.device_or_reason("tpu")[1]          # doctest: +SKIP
  "no TPU device visible to JAX (...)"
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import sparse as jsparse

import jscorch as js
from jscorch import nn
from jscorch.bench import data
from jscorch.bench.workloads import Contender, Workload, _dense, _torch

ROWS = ("SpMM", "SDDMM", "BSR-SpMM", "GCN", "block-attention", "MoE")
SIZES = {
    "full": dict(scale=17, edges=2_300_000, width=64, bsr=(4096, 32, 512),
                 attention=(4096, 64, 256, 4), moe=(4096, 512, 16), repeats=7),
    "quick": dict(scale=10, edges=8_000, width=16, bsr=(256, 16, 32),
                  attention=(256, 32, 32, 2), moe=(256, 32, 16), repeats=3),
}
#: Dense contenders run when their operands take at most this many bytes.
DENSE_LIMIT = 4 << 30
_PLATFORMS = {"gpu": "GPU", "tpu": "TPU", "cpu": "CPU"}


def device_or_reason(platform: str):
  """``(device, None)`` for the first device of ``platform``, or ``(None, reason)``."""
  try:
    return jax.devices(platform)[0], None
  except RuntimeError as e:
    return None, (f"no {_PLATFORMS.get(platform, platform)} device visible to JAX "
                  f"({str(e).splitlines()[0][:160]})")


def _jscorch(make, to_numpy=None) -> list:
  """The contenders ``jscorch`` and ``jscorch-portable`` of ``make() -> (jitted function,
  arguments)``: the second built and compiled ahead of time with ``lowering="portable"``
  (changing the setting clears JAX's caches, so it is not switched per call)."""
  f, args = make()
  with js.config.using("portable"):
    g, g_args = make()
    compiled = g.lower(*g_args).compile()
  extra = {} if to_numpy is None else dict(to_numpy=to_numpy)
  return [Contender("jscorch", lambda: f(*args), **extra),
          Contender("jscorch-portable", lambda: compiled(*g_args), **extra)]


def _fits(*shapes, itemsize=4) -> bool:
  return sum(math.prod(s) for s in shapes) * itemsize <= DENSE_LIMIT


def _torch_cuda():
  torch = _torch()
  if torch is None or not torch.cuda.is_available():
    return None
  return torch


def _torch_csr(torch, m: data.Csr):
  """``m`` as a torch CSR tensor on the GPU."""
  return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                 torch.from_numpy(m.indices.astype(np.int64)),
                                 torch.from_numpy(m.data), size=m.shape).cuda()


_NO_TORCH_CUDA = "torch with CUDA not available (pip install torch with a CUDA build)"


# -- SpMM / SDDMM ---------------------------------------------------------------------------------
def spmm(m: data.Csr, width: int) -> Workload:
  """``A @ X`` for CSR ``A``."""
  x = _dense(1, (m.shape[1], width))
  ref = (m.scipy(np.float64) @ x.astype(np.float64),)
  X = jnp.asarray(x)

  def ours():
    A = js.from_scipy(m.scipy())
    f = jax.jit(lambda A, X: A @ X)
    return f, (A, X)

  bcoo = jsparse.BCOO.from_scipy_sparse(m.scipy())
  bcsr = jsparse.BCSR.from_scipy_sparse(m.scipy())
  matmul = jax.jit(lambda B, X: B @ X)
  out = _jscorch(ours) + [
         Contender("BCOO", lambda: matmul(bcoo, X)),
         Contender("BCSR", lambda: matmul(bcsr, X))]
  skipped = {}
  if _fits(m.shape, (m.shape[1], width)):
    D = jnp.asarray(m.scipy().toarray())
    out.append(Contender("dense", lambda: matmul(D, X)))
  else:
    skipped["dense"] = f"a dense {m.shape[0]}x{m.shape[1]} matrix does not fit"
  torch = _torch_cuda()
  if torch is None:
    skipped["torch"] = _NO_TORCH_CUDA
  else:
    tA = _torch_csr(torch, m)
    tx = torch.from_numpy(x).cuda()
    out.append(Contender("torch", lambda: _synced(torch, tA @ tx),
                         lambda r: (r.cpu().numpy(),)))
  return Workload("SpMM", m.name, ref, out, skipped)


def _synced(torch, result):
  torch.cuda.synchronize()
  return result


def sddmm(m: data.Csr, width: int) -> Workload:
  """``A ⊙ (U Vᵀ)`` at ``A``'s pattern."""
  u, v = _dense(2, (m.shape[0], width)), _dense(3, (m.shape[1], width))
  ref = (m.data.astype(np.float64) * np.einsum("ek,ek->e", u[m.rows].astype(np.float64),
                                               v[m.indices].astype(np.float64)),)
  U, V = jnp.asarray(u), jnp.asarray(v)
  nnz = m.nnz

  def ours():
    A = js.from_scipy(m.scipy())
    f = jax.jit(lambda A, U, V: js.einsum("ij,ik,jk->ij", A, U, V).data)
    return f, (A, U, V)

  bcoo = jsparse.BCOO.from_scipy_sparse(m.scipy())
  sampled = jax.jit(lambda B, U, V: B.data * jsparse.bcoo_dot_general_sampled(
      U, V.T, B.indices, dimension_numbers=(([1], [0]), ([], []))))
  first = lambda r: (np.asarray(r)[:nnz],)
  out = _jscorch(ours, first) + [
         Contender("BCOO", lambda: sampled(bcoo, U, V))]
  skipped = {"dense": "an SDDMM's dense form is the whole U Vᵀ: not a contender"}
  torch = _torch_cuda()
  if torch is None:
    skipped["torch"] = _NO_TORCH_CUDA
  else:
    pattern = _torch_csr(torch, m)
    tu, tvt = torch.from_numpy(u).cuda(), torch.from_numpy(np.ascontiguousarray(v.T)).cuda()
    out.append(Contender(
        "torch", lambda: _synced(torch, torch.sparse.sampled_addmm(pattern, tu, tvt, beta=0.0)),
        lambda r: (r.values().cpu().numpy() * m.data,)))
  return Workload("SDDMM", m.name, ref, out, skipped)


# -- BSR SpMM ------------------------------------------------------------------------------------
def block_matrix(n: int, block: int, density: float, seed: int = 0) -> np.ndarray:
  """A dense `[n, n]` float32 matrix whose ``round(density * blocks)`` random ``block``²
  blocks are filled with normal values (the rest zero)."""
  rng = np.random.default_rng(seed)
  g = n // block
  keep = np.zeros(g * g, bool)
  keep[rng.choice(g * g, max(1, round(density * g * g)), replace=False)] = True
  mask = np.kron(keep.reshape(g, g), np.ones((block, block), bool))
  return np.where(mask, rng.standard_normal((n, n)), 0).astype(np.float32)


def bsr_spmm(n: int, block: int, width: int, density: float) -> Workload:
  """``A @ X`` with ``A`` `[n, n]` BSR ``(block, block)`` at ``density`` of its blocks."""
  a = block_matrix(n, block, density)
  x = _dense(4, (n, width))
  ref = (a.astype(np.float64) @ x.astype(np.float64),)
  X, D = jnp.asarray(x), jnp.asarray(a)
  fmt = js.BSR((block, block))

  def ours(format_=fmt):
    A = js.from_dense(a, format=format_)
    f = jax.jit(lambda A, X: A @ X)
    return f, (A, X)

  bcoo = jsparse.BCOO.fromdense(D)
  bcsr = jsparse.BCSR.fromdense(D)
  matmul = jax.jit(lambda B, X: B @ X)
  csr_f, csr_args = ours("csr")
  out = _jscorch(ours) + [
         Contender("jscorch CSR", lambda: csr_f(*csr_args)),
         Contender("dense", lambda: matmul(D, X)),
         Contender("BCOO", lambda: matmul(bcoo, X)),
         Contender("BCSR", lambda: matmul(bcsr, X))]
  skipped = {}
  torch = _torch_cuda()
  if torch is None:
    skipped["torch"] = _NO_TORCH_CUDA
  else:
    tA = torch.from_numpy(a).cuda().to_sparse_bsr((block, block))
    tx = torch.from_numpy(x).cuda()
    out.append(Contender("torch", lambda: _synced(torch, tA @ tx),
                         lambda r: (r.cpu().numpy(),)))
  return Workload("BSR-SpMM", f"{n}x{n} {block}x{block} blocks {density:.0%}", ref, out, skipped)


# -- GCN layer -----------------------------------------------------------------------------------
def gcn(m: data.Csr, width: int) -> Workload:
  """``sum(relu(A X W)²)`` and its gradients for ``A``'s values, ``X`` and ``W``."""
  x = _dense(6, (m.shape[1], width))
  w = (_dense(7, (width, width)) / np.sqrt(width)).astype(np.float32)
  A64, x64, w64 = m.scipy(np.float64), x.astype(np.float64), w.astype(np.float64)
  xw = x64 @ w64
  h = A64 @ xw
  g = 2 * np.maximum(h, 0)
  gxw = A64.T @ g
  ref = (np.sum(np.maximum(h, 0) ** 2), np.einsum("ek,ek->e", g[m.rows], xw[m.indices]),
         gxw @ w64.T, x64.T @ gxw)
  X, W = jnp.asarray(x), jnp.asarray(w)
  nnz = m.nnz

  def grads(layer):
    loss = lambda a, x, w: jnp.sum(jax.nn.relu(layer(a, x @ w)) ** 2)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

  def flat(r):
    value, (d_a, d_x, d_w) = r
    return np.asarray(value), np.asarray(getattr(d_a, "data", d_a))[:nnz], d_x, d_w

  def ours():
    A = js.from_scipy(m.scipy())
    f = grads(lambda a, y: A.with_data(a) @ y)
    return f, (A.data, X, W)

  bcoo = jsparse.BCOO.from_scipy_sparse(m.scipy())
  bco = grads(lambda a, y: jsparse.BCOO((a, bcoo.indices), shape=m.shape) @ y)
  out = _jscorch(ours, flat) + [
         Contender("BCOO", lambda: bco(bcoo.data, X, W), flat)]
  return Workload("GCN", m.name, ref, out, {"dense": "the adjacency's gradient is sparse"})


# -- block-sparse attention -----------------------------------------------------------------------
def block_attention(length: int, block: int, features: int, heads: int) -> Workload:
  """``nn.SparseAttention`` on ``bigbird_mask(..., block=)`` vs dense masked attention."""
  mask = nn.bigbird_mask(length, window=1, num_global=1, num_random=2, block=block)
  attend = np.asarray(mask.todense()) != 0
  attn = nn.SparseAttention(heads, features, rngs=nnx.Rngs(0))
  p = {name: (np.asarray(lin.kernel[...], np.float64), np.asarray(lin.bias[...], np.float64))
       for name, lin in (("query", attn.query), ("key", attn.key), ("value", attn.value),
                         ("out", attn.out))}
  x = _dense(8, (length, features))
  ref = (_attention64(x.astype(np.float64), attend, p, heads),)
  X = jnp.asarray(x)
  graphdef, state = nnx.split(attn)

  def ours():
    f = jax.jit(lambda state, x, mask: nnx.merge(graphdef, state)(x, mask))
    return f, (state, X, mask)

  pj = {k: tuple(jnp.asarray(a, jnp.float32) for a in v) for k, v in p.items()}
  dense_mask = jnp.asarray(attend)
  dense = jax.jit(lambda x, m: _attention_dense(x, m, pj, heads))
  return Workload("block-attention", f"L={length} {block}x{block} blocks "
                  f"{attend.mean():.0%} dense", ref,
                  _jscorch(ours) + [Contender("dense", lambda: dense(X, dense_mask))])


def _attention64(x, attend, p, heads):
  lin = lambda name, y: y @ p[name][0] + p[name][1]
  length = x.shape[0]
  q, k, v = (lin(n, x).reshape(length, heads, -1) for n in ("query", "key", "value"))
  s = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(q.shape[-1])
  s = np.where(attend, s, -np.inf)
  e = np.exp(s - s.max(-1, keepdims=True))
  w = e / e.sum(-1, keepdims=True)
  return lin("out", np.einsum("hij,jhd->ihd", w, v).reshape(length, -1))


def _attention_dense(x, attend, p, heads):
  lin = lambda name, y: y @ p[name][0] + p[name][1]
  length = x.shape[0]
  q, k, v = (lin(n, x).reshape(length, heads, -1) for n in ("query", "key", "value"))
  s = jnp.einsum("ihd,jhd->hij", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  w = jax.nn.softmax(jnp.where(attend, s, -jnp.inf), axis=-1)
  return lin("out", jnp.einsum("hij,jhd->ihd", w, v).reshape(length, -1))


# -- MoE -----------------------------------------------------------------------------------------
def moe(tokens: int, features: int, experts: int, top_k: int = 2) -> Workload:
  """``nn.MoE`` (sparse gate; a grouped matmul on accelerators) vs the dense dispatch."""
  layer = nn.MoE(experts, features, features, top_k=top_k, rngs=nnx.Rngs(0))
  x = _dense(9, (tokens, features))
  gate, _ = layer.gates(jnp.asarray(x))
  g = np.asarray(gate.todense(), np.float64)
  kernel = np.asarray(layer.kernel[...], np.float64)
  bias = np.asarray(layer.bias[...], np.float64)
  ref = (np.einsum("te,teo->to", g, np.einsum("ti,eio->teo", x.astype(np.float64), kernel)
                   + bias[None]),)
  X = jnp.asarray(x)
  graphdef, state = nnx.split(layer)

  def ours():
    f = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)[0])
    return f, (state, X)

  G = jnp.asarray(g, jnp.float32)
  K, B = layer.kernel[...], layer.bias[...]
  dense = jax.jit(lambda x, G: jnp.einsum("te,teo->to", G, jnp.einsum("ti,eio->teo", x, K)
                                          + B[None]))
  return Workload("MoE", f"{tokens} tokens, top-{top_k} of {experts} experts", ref,
                  _jscorch(ours) + [Contender("dense dispatch", lambda: dense(X, G))])


def build_workloads(quick: bool, only: set | None) -> list:
  """Makers of the accelerator workloads (run on JAX's default device)."""
  size = SIZES["quick" if quick else "full"]
  rmat = lambda: data.rmat(size["scale"], size["edges"])
  uniform = lambda: data.uniform(1 << size["scale"], size["edges"], seed=1)
  n, block, width = size["bsr"]
  specs = [("SpMM", lambda: [spmm(m(), size["width"]) for m in (rmat, uniform)]),
           ("SDDMM", lambda: [sddmm(m(), size["width"]) for m in (rmat, uniform)]),
           ("BSR-SpMM", lambda: [bsr_spmm(n, block, width, d) for d in (0.05, 0.1, 0.25, 0.5)]),
           ("GCN", lambda: gcn(rmat(), size["width"])),
           ("block-attention", lambda: block_attention(*size["attention"])),
           ("MoE", lambda: moe(*size["moe"]))]
  return [make for key, make in specs if only is None or key in only]


def run(platform: str, quick: bool, only: set | None, run_workload, out=print) -> list:
  """Runs the workloads on the first ``platform`` device with ``run_workload(wl, repeats,
  out)`` (the runner's); returns the rows. The caller has checked the device exists."""
  device, _ = device_or_reason(platform)
  jax.config.update("jax_bcoo_cusparse_lowering", True)
  out(f"accelerator workloads on {device.device_kind} ({platform})")
  size = SIZES["quick" if quick else "full"]
  rows = []
  with jax.default_device(device):
    for make in build_workloads(quick, only):
      made = make()
      for wl in made if isinstance(made, list) else [made]:
        rows.append(run_workload(wl, size["repeats"], out))
  return rows
