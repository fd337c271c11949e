"""The benchmark workloads and their contenders.

Each workload builds, from one set of host inputs, a float64 reference and a list
of contenders: jscorch, ``jax.experimental.sparse`` BCOO and BCSR, a
``segment_sum`` composition, scipy and torch (when installed). A contender is a
zero-argument callable (already jitted, inputs on device) plus a function that
turns its result into numpy arrays for checking.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jsparse

import jscorch as js
from jscorch.bench.data import Csr


@dataclasses.dataclass
class Contender:
  name: str
  run: Callable[[], object]
  to_numpy: Callable[[object], tuple] = lambda r: (np.asarray(r),)


@dataclasses.dataclass
class Workload:
  name: str
  data: str
  reference: tuple            # float64 numpy arrays
  contenders: list
  skipped: dict = dataclasses.field(default_factory=dict)   # name -> reason
  # lines printed under the table: notes(results, repeats) -> list[str], after the timing
  notes: Callable[[list, int], list] | None = None


def _torch():
  try:
    import torch
  except ImportError:
    return None
  return torch


def _dense(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _jax_csr(m: Csr):
  return js.from_scipy(m.scipy())


def _segment_spmm(m: Csr, width):
  rows, cols = jnp.asarray(m.rows), jnp.asarray(m.indices)

  def f(vals, x):
    gathered = x[cols] * (vals[:, None] if width else vals)
    return jax.ops.segment_sum(gathered, rows, num_segments=m.shape[0], indices_are_sorted=True)
  return f


def spmm(m: Csr, width: int) -> Workload:
  """``A @ X`` (width > 0) or ``A @ x`` (width 0)."""
  x = _dense(1, (m.shape[1], width) if width else (m.shape[1],))
  ref = (m.scipy(np.float64) @ x.astype(np.float64),)
  A, X = _jax_csr(m), jnp.asarray(x)
  sub = "ij,jk->ik" if width else "ij,j->i"
  ours = jax.jit(lambda A, X: js.einsum(sub, A, X))
  bcoo = jsparse.BCOO.from_scipy_sparse(m.scipy())
  bcsr = jsparse.BCSR.from_scipy_sparse(m.scipy())
  matmul = jax.jit(lambda B, X: B @ X)
  seg = jax.jit(_segment_spmm(m, width))
  vals = jnp.asarray(m.data)
  sp = m.scipy()
  out = [Contender("jscorch", lambda: ours(A, X)),
         Contender("BCOO", lambda: matmul(bcoo, X)),
         Contender("BCSR", lambda: matmul(bcsr, X)),
         Contender("segment_sum", lambda: seg(vals, X)),
         Contender("scipy", lambda: sp @ x)]
  torch = _torch()
  if torch is not None:
    tA = torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                 torch.from_numpy(m.indices.astype(np.int64)),
                                 torch.from_numpy(m.data), size=m.shape)
    tx = torch.from_numpy(x)
    out.append(Contender("torch", lambda: tA @ tx, lambda r: (r.numpy(),)))
  return Workload("SpMM" if width else "SpMV", m.name, ref, out)


def sddmm(m: Csr, width: int) -> Workload:
  """``A ⊙ (U Vᵀ)`` at A's pattern."""
  u, v = _dense(2, (m.shape[0], width)), _dense(3, (m.shape[1], width))
  rows, cols = m.rows, m.indices
  ref = (m.data.astype(np.float64) * np.einsum("ek,ek->e", u[rows].astype(np.float64),
                                               v[cols].astype(np.float64)),)
  A, U, V = _jax_csr(m), jnp.asarray(u), jnp.asarray(v)
  ours = jax.jit(lambda A, U, V: js.einsum("ij,ik,jk->ij", A, U, V).data)
  nnz = m.nnz
  bcoo = jsparse.BCOO.from_scipy_sparse(m.scipy())
  sampled = jax.jit(lambda B, U, V: B.data * jsparse.bcoo_dot_general_sampled(
      U, V.T, B.indices, dimension_numbers=(([1], [0]), ([], []))))
  jr, jc, jv = jnp.asarray(rows), jnp.asarray(cols), jnp.asarray(m.data)
  seg = jax.jit(lambda vals, U, V: vals * jnp.einsum("ek,ek->e", U[jr], V[jc]))
  out = [Contender("jscorch", lambda: ours(A, U, V), lambda r: (np.asarray(r)[:nnz],)),
         Contender("BCOO", lambda: sampled(bcoo, U, V)),
         Contender("segment_sum", lambda: seg(jv, U, V))]
  torch = _torch()
  if torch is not None:
    pattern = torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                      torch.from_numpy(m.indices.astype(np.int64)),
                                      torch.from_numpy(m.data), size=m.shape)
    tu, tvt = torch.from_numpy(u), torch.from_numpy(np.ascontiguousarray(v.T))
    out.append(Contender(
        "torch", lambda: torch.sparse.sampled_addmm(pattern, tu, tvt, beta=0.0),
        lambda r: (r.values().numpy() * m.data,)))
  return Workload("SDDMM", m.name, ref, out)


def _scipy_csr(pos, crd, data, shape):
  """A float64 scipy CSR matrix from CSR buffers (padding past ``pos[-1]`` dropped)."""
  import scipy.sparse as sp
  pos, crd = np.asarray(pos, np.int64), np.asarray(crd, np.int64)
  used = int(pos[-1])
  return sp.csr_matrix((np.asarray(data, np.float64)[:used], crd[:used], pos), shape=shape)


def _sorted_csr(pos, crd, data, shape, who):
  """Like :func:`_scipy_csr`, but first checks that every row's columns are strictly
  increasing (the CSR result is claimed ordered and unique)."""
  m = _scipy_csr(pos, crd, data, shape)
  rows = np.repeat(np.arange(shape[0]), np.diff(m.indptr))
  bad = (np.diff(m.indices) <= 0) & (rows[1:] == rows[:-1])
  if bad.any() or (m.indices >= shape[1]).any():
    raise ValueError(f"{who}: result columns are not sorted and unique within rows")
  return m


def spgemm(m: Csr) -> Workload:
  """``A @ A`` with a sparse result, checked as a sparse difference against float64.

  Every result is turned into a float64 scipy CSR matrix and compared with the
  float64 product as ``|R - ref| / |ref|`` over the union of both patterns, so
  explicit zeros, cancellations and any column order are compared correctly.
  """
  s = m.scipy()
  ref = (m.scipy(np.float64) @ m.scipy(np.float64)).tocsr()
  A = _jax_csr(m)

  def ours_to_numpy(r):
    return (_sorted_csr(*r.indices, r.data, m.shape, "jscorch"),)

  def torch_to_numpy(r):
    return (_scipy_csr(r.crow_indices().numpy(), r.col_indices().numpy(),
                       r.values().numpy(), m.shape),)

  out = [Contender("jscorch", lambda: js.einsum("ij,jk->ik", A, A), ours_to_numpy),
         Contender("scipy", lambda: s @ s, lambda r: (r.tocsr().astype(np.float64),))]
  torch = _torch()
  if torch is not None:
    tA = torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                 torch.from_numpy(m.indices.astype(np.int64)),
                                 torch.from_numpy(m.data), size=m.shape)
    out.append(Contender("torch", lambda: tA @ tA, torch_to_numpy))
  slots = m.nnz * m.nnz
  skipped = {"BCOO": f"bcoo_spdot_general reserves nse_a*nse_b = {slots:,} slots "
                     f"({slots * 12 / 2**30:.0f} GiB)"}
  return Workload("SpGEMM", m.name, (ref,), out, skipped)


def mttkrp(n: int, coords, values, rank: int) -> Workload:
  """``Σ_jk T_ijk J_jr K_kr`` on a 3-tensor."""
  j, k = _dense(4, (n, rank)), _dense(5, (n, rank))
  ref = np.zeros((n, rank))
  np.add.at(ref, coords[:, 0], values[:, None].astype(np.float64) *
            j[coords[:, 1]].astype(np.float64) * k[coords[:, 2]].astype(np.float64))
  T = js.from_coo(jnp.asarray(coords), jnp.asarray(values), (n, n, n), format="csf")
  J, K = jnp.asarray(j), jnp.asarray(k)
  ours = jax.jit(lambda T, J, K: js.einsum("ijk,jr,kr->ir", T, J, K))
  c0, c1, c2 = (jnp.asarray(coords[:, d]) for d in range(3))
  vals = jnp.asarray(values)
  seg = jax.jit(lambda v, J, K: jax.ops.segment_sum(v[:, None] * J[c1] * K[c2], c0,
                                                    num_segments=n, indices_are_sorted=True))
  bcoo = jsparse.BCOO((vals, jnp.asarray(coords)), shape=(n, n, n))
  bfun = jax.jit(jsparse.sparsify(lambda T, J, K: jnp.einsum("ijk,jr,kr->ir", T, J, K)))
  return Workload("MTTKRP", f"tensor{n}^3", (ref,), [
      Contender("jscorch", lambda: ours(T, J, K)),
      Contender("segment_sum", lambda: seg(vals, J, K)),
      Contender("BCOO", lambda: bfun(bcoo, J, K))])


def gcn(m: Csr, width: int, adjacency_grad: bool) -> Workload:
  """One GCN layer ``relu(A X W)``, forward + backward (W, X, and optionally A's values)."""
  x = _dense(6, (m.shape[1], width))
  w = (_dense(7, (width, width)) / np.sqrt(width)).astype(np.float32)
  A64 = m.scipy(np.float64)
  x64, w64 = x.astype(np.float64), w.astype(np.float64)
  h = A64 @ (x64 @ w64)
  g = 2 * np.maximum(h, 0)                     # d loss / d h for loss = sum(relu(h)^2)
  gxw = A64.T @ g
  ref = [np.sum(np.maximum(h, 0) ** 2), x64.T @ gxw, gxw @ w64.T]
  if adjacency_grad:
    xw = x64 @ w64
    ref.append(np.einsum("ek,ek->e", g[m.rows], xw[m.indices]))
  argnums = (0, 1, 2) if adjacency_grad else (1, 2)

  def loss(layer):
    return lambda a, x, w: jnp.sum(jax.nn.relu(layer(a, x @ w)) ** 2)

  def wrap(f):
    g = jax.jit(jax.value_and_grad(f, argnums=argnums))
    return g

  def flat(r):
    value, grads = r
    grads = [np.asarray(getattr(gr, "data", gr)) for gr in grads]
    if adjacency_grad:
      d_a, d_x, d_w = grads
      return np.asarray(value), d_w, d_x, d_a[:m.nnz]
    d_x, d_w = grads
    return np.asarray(value), d_w, d_x

  A, X, W = _jax_csr(m), jnp.asarray(x), jnp.asarray(w)
  ours = wrap(loss(lambda a, y: js.einsum("ij,jk->ik", A.with_data(a), y)))
  bcoo = jsparse.BCOO.from_scipy_sparse(m.scipy())
  bco = wrap(loss(lambda a, y: jsparse.BCOO((a, bcoo.indices), shape=m.shape) @ y))
  seg_f = _segment_spmm(m, width)
  seg = wrap(loss(seg_f))
  vals = jnp.asarray(m.data)
  out = [Contender("jscorch", lambda: ours(A.data, X, W), flat),
         Contender("BCOO", lambda: bco(bcoo.data, X, W), flat),
         Contender("segment_sum", lambda: seg(vals, X, W), flat)]
  skipped = {}
  torch = _torch()
  if torch is not None and not adjacency_grad:
    tA = torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                 torch.from_numpy(m.indices.astype(np.int64)),
                                 torch.from_numpy(m.data), size=m.shape)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(w).requires_grad_()

    def torch_step():
      tx.grad = tw.grad = None
      value = torch.relu(tA @ (tx @ tw)).pow(2).sum()
      value.backward()
      return value.detach().numpy(), tw.grad.numpy(), tx.grad.numpy()
    out.append(Contender("torch", torch_step, lambda r: tuple(np.asarray(v) for v in r)))
  elif adjacency_grad:
    skipped["torch"] = "no sparse gradient w.r.t. the adjacency values (dense N x N)"
  name = "GCN fwd+bwd (W, X, A values)" if adjacency_grad else "GCN fwd+bwd (W, X)"
  return Workload(name, m.name, tuple(ref), out, skipped)


def sparse_linear(batch: int, n_in: int, n_out: int, density: float) -> Workload:
  """A sparse weight, as ``nn.SparseLinear`` uses it: ``loss = sum((x @ W)^2)``, forward +
  backward (w.r.t. ``W``'s stored values and ``x``), against the same layer with a dense
  weight (its gradient read at ``W``'s pattern), BCOO and torch (when installed)."""
  rng = np.random.default_rng(8)
  mask = rng.random((n_in, n_out)) < density
  w = np.where(mask, rng.standard_normal((n_in, n_out)), 0).astype(np.float32)
  x = _dense(9, (batch, n_in))
  rows, cols = np.nonzero(mask)
  x64, w64 = x.astype(np.float64), w.astype(np.float64)
  g = 2 * (x64 @ w64)
  ref = (np.sum((x64 @ w64) ** 2), (x64.T @ g)[rows, cols], g @ w64.T)
  W = js.from_dense(jnp.asarray(w), format="csr")
  X, Wd = jnp.asarray(x), jnp.asarray(w)

  def step(product):
    return jax.jit(jax.value_and_grad(lambda v, x: jnp.sum(product(v, x) ** 2), argnums=(0, 1)))

  def flat(r):
    value, (d_w, d_x) = r
    d_w = np.asarray(d_w)
    return np.asarray(value), d_w[rows, cols] if d_w.ndim == 2 else d_w[:len(rows)], d_x

  ours = step(lambda v, x: x @ W.with_data(v))
  dense = step(lambda v, x: x @ v)
  bcoo = jsparse.BCOO.fromdense(Wd)
  theirs = step(lambda v, x: x @ jsparse.BCOO((v, bcoo.indices), shape=bcoo.shape))
  out = [Contender("jscorch", lambda: ours(W.data, X), flat),
         Contender("dense", lambda: dense(Wd, X), flat),
         Contender("BCOO", lambda: theirs(bcoo.data, X), flat)]
  torch = _torch()
  skipped = {} if torch is not None else {"torch": "not installed (pip install torch==2.13.0)"}
  if torch is not None:
    # W^T stored as CSR (torch has no backward for a transposed CSR, which is CSC)
    tw_t = torch.from_numpy(np.ascontiguousarray(w.T)).to_sparse_csr().requires_grad_()
    tx = torch.from_numpy(x).requires_grad_()

    def torch_step():
      tw_t.grad = tx.grad = None
      value = torch.sparse.mm(tw_t, tx.t()).t().pow(2).sum()
      value.backward()
      grad_w = tw_t.grad.to_dense().numpy().T
      return value.detach().numpy(), grad_w, tx.grad.numpy()
    out.append(Contender("torch", torch_step,
                         lambda r: (np.asarray(r[0]), r[1][rows, cols], r[2])))
  return Workload("SparseLinear fwd+bwd", f"x {batch}x{n_in} @ W {n_in}x{n_out}, "
                  f"{density:.0%} dense", ref, out, skipped)
