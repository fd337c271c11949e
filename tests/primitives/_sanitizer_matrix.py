"""The kernel test matrix, run by tests/primitives/test_sanitizer.py under AddressSanitizer.

Not a test module: a script executed in a child process with ``JSCORCH_SANITIZE=1``
(kernels built with ``-fsanitize=address``) and libasan preloaded. It runs a
representative subset of the cases of ``test_kernel_paths.py`` (every format,
batch and block dims, padding, SDDMM, transposed products, intersections, SpGEMM),
their gradients, adversarial inputs (all-padding operands, large padding, a
SpGEMM whose capacity is too small) and power-law matrices large enough for the
parallel paths (staged tiles included), checking each result against numpy. Any out-of-bounds access
aborts the process with an AddressSanitizer report.

Prints ``MATRIX OK <number of kernel lowerings>`` at the end.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jscorch as js  # noqa: E402
from jscorch.primitives import einsum_kernel, kernel_build  # noqa: E402

import test_codegen as cg  # noqa: E402
import test_kernel_paths as paths  # noqa: E402
import util  # noqa: E402

CASES = [
    "spmv_csr", "spmv_coo", "spmm_csc", "spmm_dcsr", "spmm_coo_unordered", "spmm_dcsc",
    "spmm_wide19_csr", "spmm_wide16_coo", "dense_left_csc", "transposed_csr", "transposed_coo",
    "sddmm_csr", "sddmm_coo", "sddmm_dcsr", "mul_dense_first_csc", "mttkrp_csf3",
    "mttkrp_coo3", "mttkrp_dense_dcsr3", "ttm_csf", "batched_bmm_csr", "batched_bmm_coo",
    "batched_sddmm_csr", "batched_sum_coo", "block_spmm_csr", "block_contract_coo",
    "block_mul_csc", "reduce_cols_coo", "reduce_mode1_csf", "moe_csr", "intersect_csr_csr",
    "intersect_dcsr_dcsr", "intersect_coo_coo", "inner_coo_coo", "spgemm_csr_csr",
    "spgemm_dense_out", "intersect_csr_coo", "inner_csr_dcsr", "spgemm_batched_coo",
]
GRADS = ["spmm_csr", "sddmm_csr", "transposed_csr", "intersect_csr_csr", "spgemm_csr_csr",
         "block_spmm_csr"]

kernels = 0


def check(name, got, expected, dtype):
  np.testing.assert_allclose(paths.as_dense(got), expected, err_msg=name, **paths.tol(dtype))


def run(fun, *args):
  global kernels
  einsum_kernel.last_decisions.clear()
  out = jax.block_until_ready(jax.jit(fun)(*args))
  decisions = [d for _, d in einsum_kernel.last_decisions]
  kernels += decisions.count("kernel")
  return out, decisions


def case_matrix():
  """Each case once: alternating float32 / float64 and small / large padding."""
  for i, name in enumerate(CASES):
    case = paths.CASES[name]
    assert case.expected == "kernel", name
    dtypes = paths.DTYPES[name]
    dtype = np.dtype(dtypes[i % len(dtypes)])
    with util.dtype_context(dtype):
      ops, refs = build(case, dtype, padding=(2, 7)[i % 2])
      kw = dict(case.kwargs)
      out, decisions = run(lambda *o: js.einsum(case.subscripts, *o, **kw), *ops)
      assert decisions == ["kernel"], (name, decisions)
      check(name, out, paths.numpy_reference(case.subscripts, refs), dtype)


def build(case, dtype, padding):
  rng = np.random.default_rng(len(case.subscripts) + padding)
  ops, refs = [], []
  for o in case.operands:
    if isinstance(o, paths.Sp):
      x = util.random_dense(rng, o.shape, n_batch=o.n_batch, n_dense=o.n_dense,
                            density=o.density, dtype=dtype)
      ops.append(paths.encode(x, o.format, n_batch=o.n_batch, n_dense=o.n_dense,
                              padding=padding))
    else:
      x = util.random_values(rng, o.shape, dtype)
      ops.append(jnp.asarray(x))
    refs.append(x)
  return ops, refs


def gradient_matrix():
  for name in GRADS:
    case = paths.CASES[name]
    ops, refs = build(case, np.dtype(np.float32), 3)
    sparse = [isinstance(o, paths.Sp) for o in case.operands]
    kw = dict(case.kwargs)

    def loss(vals, ops):
      args = [o.with_data(v) if sp else v for v, o, sp in zip(vals, ops, sparse)]
      y = js.einsum(case.subscripts, *args, **kw)
      return jnp.sum((y.data if isinstance(y, js.SparseArray) else y) ** 2)

    vals = [o.data if sp else o for o, sp in zip(ops, sparse)]
    grads, decisions = run(jax.grad(loss), vals, ops)
    assert "kernel" in decisions, (name, decisions)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads), name


def adversarial():
  # an operand with no stored entry at all: every position is padding
  A = paths.encode(np.zeros((5, 6), np.float32), "csr", padding=4)
  X = jnp.asarray(util.random_values(0, (6, 16), np.float32))
  out, decisions = run(lambda A, X: js.einsum("ij,jk->ik", A, X), A, X)
  assert decisions == ["kernel"] and not np.asarray(out).any()
  for fmt in ("coo", "dcsr", "csc"):
    A = paths.encode(np.zeros((5, 6), np.float32), fmt, padding=4)
    out, decisions = run(lambda A, X: js.einsum("ij,ik,jk->ij", A, X[:5], X), A, X)
    assert decisions == ["kernel"] and not np.asarray(out.data).any(), fmt
    out, decisions = run(lambda A, X: js.einsum("ji,jk->ik", A, X[:5]), A, X)
    assert decisions == ["kernel"] and not np.asarray(out).any(), fmt
  # SpGEMM whose capacity is too small: poisoned with NaN, never written past nse
  x = util.random_dense(1, (6, 7), density=0.6)
  y = util.random_dense(2, (7, 5), density=0.6)
  exact = int(((x != 0).astype(int) @ (y != 0).astype(int) != 0).sum())
  A, B = paths.encode(x, "csr"), paths.encode(y, "csr")
  out, decisions = run(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=exact - 3), A, B)
  assert decisions == ["kernel"] and np.isnan(np.asarray(out.data)).all()
  out, _ = run(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=exact), A, B)
  np.testing.assert_allclose(paths.decode(out), x.astype(np.float64) @ y, rtol=1e-5, atol=1e-5)


def _sparse(rng, shape, fmt, *, n_batch=0, n_dense=0, density=0.5, padding=2):
  """``util.random_sparse`` built with numpy (``paths.encode``): under the sanitizer every
  eager XLA program costs seconds, so operands are encoded and results decoded in numpy."""
  x = util.random_dense(rng, shape, n_batch=n_batch, n_dense=n_dense, density=density)
  return paths.encode(x, fmt, n_batch=n_batch, n_dense=n_dense, padding=padding), x


def union_matrix():
  """The union kernel (A + B, maximum, concatenate): CSR/CSC, batch and block dims, padding,
  empty rows, three parts, an all-padding operand, a 0-row matrix, a capacity too small,
  unchecked garbage buffers under jit, and rows long enough for the parallel passes."""
  global kernels
  from jscorch.primitives.structure import union_kernel
  union_kernel.last_decisions.clear()
  rng = np.random.default_rng(9)
  tol = dict(rtol=1e-5, atol=1e-5)
  for f, ref, fmt, shape, nb, nd, pad in [
      (js.maximum, np.maximum, "csr", (7, 9), 0, 0, 2), (js.add, np.add, "csc", (9, 7), 0, 0, 7),
      (js.add, np.add, "csr", (3, 5, 6), 1, 0, 4), (js.add, np.add, "csr", (6, 5, 2), 0, 1, 3)]:
    A, x = _sparse(rng, shape, fmt, n_batch=nb, n_dense=nd, padding=pad, density=0.3)
    B, y = _sparse(rng, shape, fmt, n_batch=nb, n_dense=nd, padding=1, density=0.3)
    out = jax.block_until_ready(jax.jit(f)(A, B))
    np.testing.assert_allclose(paths.decode(out), ref(x, y), err_msg=fmt, **tol)
  xi = (np.arange(20, dtype=np.int32).reshape(4, 5) % 3) * 7      # the int32 sum kernel
  Ai = js.from_dense(xi, nse=15)
  np.testing.assert_array_equal(paths.decode(jax.jit(js.add)(Ai, Ai)), 2 * xi)
  A, x = _sparse(rng, (4, 6), "csr", padding=3)
  out = jax.jit(lambda a: js.concatenate([a, a, a], axis=0))(A)
  np.testing.assert_allclose(paths.decode(out), np.concatenate([x] * 3, 0), **tol)
  out = jax.jit(lambda a: js.concatenate([a, -a], axis=1))(A)
  np.testing.assert_allclose(paths.decode(out), np.concatenate([x, -x], 1), **tol)
  Z = js.from_dense(np.zeros((4, 6), np.float32), nse=5)           # every position padding
  np.testing.assert_allclose(paths.decode(jax.jit(js.subtract)(Z, A)), -x, **tol)
  small = jax.jit(lambda a, z: js.add(a, z, nse=2))(A, A)          # capacity too small
  assert np.isnan(np.asarray(small.data)).all()
  E = js.from_dense(np.zeros((0, 6), np.float32), nse=2)
  assert paths.decode(jax.jit(js.add)(E, E)).shape == (0, 6)
  garbage_pos = jnp.array([0, 7, 2, 9, 1, 100, -5], jnp.int32)          # not monotone
  garbage_crd = jnp.array([3, -1, 9, 0, 2, 2, 4, 1, 0], jnp.int32)      # out of range
  G = js.SparseArray.from_buffers(jnp.ones(9), [garbage_pos, garbage_crd], shape=(6, 5),
                                  format="csr", check=False)
  jax.block_until_ready(jax.jit(js.add)(G, G).data)
  P, S = cg.power_law_csr(4, 800, 3000, 20000)
  Q, T = cg.power_law_csr(6, 800, 3000, 20000)
  out = jax.jit(js.add)(P, Q)
  np.testing.assert_allclose(paths.decode(out), (S + T).toarray(), **tol)
  decisions = [d for _, d in union_kernel.last_decisions]
  assert decisions.count("kernel") >= 9 and set(decisions) == {"kernel"}, decisions
  kernels += decisions.count("kernel")


def power_law():
  A, S = cg.power_law_csr(4, 800, 3000, 20000)
  rng = np.random.default_rng(5)
  X = util.random_values(rng, (3000, 16), np.float32)
  G = util.random_values(rng, (800, 16), np.float32)
  tol = dict(rtol=1e-4, atol=1e-3)
  out, _ = run(lambda A, X: js.einsum("ij,jk->ik", A, X), A, X)
  np.testing.assert_allclose(np.asarray(out), S @ X, **tol)
  for g in (G, util.random_values(rng, (800, 64), np.float32)):    # accumulated; re-sorted
    out, _ = run(lambda A, G: js.einsum("ij,ik->jk", A, G), A, g)
    np.testing.assert_allclose(np.asarray(out), S.T @ g, **tol)
  out, _ = run(lambda A, G, X: js.einsum("ij,ik,jk->ij", A, G, X), A, G, X)
  coo = S.tocoo()
  np.testing.assert_allclose(np.asarray(out.data)[:S.nnz],
                             coo.data * np.einsum("nk,nk->n", G[coo.row], X[coo.col]), **tol)
  B, T = cg.power_law_csr(6, 3000, 400, 6000)
  C = (S @ T).tocsr()
  out, _ = run(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=C.nnz + 2), A, B)
  np.testing.assert_allclose(paths.decode(out), C.toarray(), **tol)
  # joins: B's rows located at A's columns (a dense result, parallel over rows); the
  # derivative of the product, sampled products intersecting rows (no work)
  work = int(np.asarray((S != 0).sum(0)).ravel() @ np.asarray((T != 0).sum(1)).ravel())
  out, decisions = run(lambda A, B: js.einsum("ij,jk->ik", A, B, out_format="dense",
                                              work=work), A, B)
  assert decisions == ["kernel"], decisions
  np.testing.assert_allclose(np.asarray(out), C.toarray(), **tol)
  grads, decisions = run(jax.grad(lambda a, b: js.einsum(
      "ij,jk->ik", A.with_data(a), B.with_data(b), nse=C.nnz + 2).data.sum(), (0, 1)),
      A.data, B.data)
  assert set(decisions) == {"kernel"}, decisions
  # d sum(A @ B) / dA[i, j] = sum_k B[j, k]; / dB[j, k] = sum_i A[i, j]
  np.testing.assert_allclose(np.asarray(grads[0])[:S.nnz],
                             np.asarray(T.sum(1)).ravel()[S.indices], **tol)
  np.testing.assert_allclose(np.asarray(grads[1])[:T.nnz],
                             np.asarray(S.sum(0)).ravel()[np.repeat(np.arange(3000),
                                                                    np.diff(T.indptr))], **tol)
  # staged tiles (orient.tiling): x @ A and x @ A.T over 3 full tiles and a partial one,
  # in parallel; a free index between two summed ones (accumulated tiles)
  x = util.random_values(rng, (200, 800), np.float32)
  out, decisions = run(lambda x, A: x @ A, x, A)
  np.testing.assert_allclose(np.asarray(out), x @ S, **tol)
  y = util.random_values(rng, (200, 3000), np.float32)
  out, _ = run(lambda y, A: y @ A.T, y, A)
  np.testing.assert_allclose(np.asarray(out), y @ S.T, **tol)
  z = util.random_values(rng, (800, 37, 3), np.float32)
  D, Sd = cg.power_law_csr(7, 800, 3, 1500)
  out, _ = run(lambda z, D: js.einsum("ajb,ab->j", z, D), z, D)
  np.testing.assert_allclose(np.asarray(out), np.einsum("ajb,ab->j", z, Sd.toarray()), **tol)


def structure_matrix():
  """The structure kernels (conversions, coalescing): every walk and sort path, batch and
  block dims, padding, duplicates, all-padding and over-capacity inputs, an unchecked
  non-monotone pos and garbage coordinates under jit; results against numpy."""
  global kernels
  from jscorch.primitives.structure import kernel as structure_kernel
  structure_kernel.last_decisions.clear()
  rng = np.random.default_rng(5)
  unordered = js.Format(js.compressed(ordered=False, unique=False),
                        js.singleton(ordered=False, unique=False))
  for src, dst, shape, nb, nd in [("csr", "csc", (40, 30), 0, 0), ("csc", "coo", (30, 40), 0, 0),
                                  ("coo", "csr", (25, 31), 1, 0), ("dcsr", "dcsr", (20, 50), 0, 1),
                                  ("csf", "coo", (6, 7, 8), 0, 0), ("csr", "dcsr", (9, 700), 1, 0)]:
    A, x = _sparse(rng, (2,) * nb + shape + (3,) * nd, src, n_batch=nb, n_dense=nd,
                              padding=5)
    out = jax.block_until_ready(jax.jit(lambda A: A.asformat(dst))(A))
    np.testing.assert_allclose(paths.decode(out), x, err_msg=f"{src}->{dst}")
  A, x = _sparse(rng, (300, 400), "csr", density=0.4, padding=9)   # (threads)
  out = jax.block_until_ready(jax.jit(lambda A: A.asformat("csc"))(A))
  np.testing.assert_allclose(paths.decode(out), x, err_msg="parallel csr->csc")
  for shape, fmt, density in [((3000, 40), "csr", 0.3), ((33, 33, 40), "csf", 0.78)]:
    A, x = _sparse(rng, shape, fmt, density=density, padding=9)  # (threads, blocks)
    out = jax.block_until_ready(jax.jit(lambda A: A.asformat("coo"))(A))
    np.testing.assert_allclose(paths.decode(out), x, err_msg=f"parallel {fmt}->coo")
  for shape, n in [((50, 60), 400), ((3, 500), 400), ((1 << 20, 3), 64), ((7,), 30)]:
    # (long rows: merge-sorted buckets; a level of 2^20: radix passes)
    idx = rng.integers(-2, max(shape) + 2, (n, len(shape))).astype(np.int32)
    vals = rng.standard_normal(n).astype(np.float32)
    keep = np.all((idx >= 0) & (idx < np.asarray(shape)), 1)
    dense = np.zeros(shape)
    np.add.at(dense, tuple(idx[keep].T), vals[keep])
    for fmt in (("csr", unordered) if len(shape) == 2 else ("coo",)):
      out = jax.jit(lambda i, v: js.from_coo(i, v, shape, format=fmt, nse=n, check=False))(
          idx, vals)
      np.testing.assert_allclose(paths.decode(out), dense, rtol=1e-5, atol=1e-5)
      if fmt is unordered:
        s = jax.jit(js.sum_duplicates)(out)
        np.testing.assert_allclose(paths.decode(s), dense, rtol=1e-5, atol=1e-5)
  # adversarial: all padding, a capacity too small, garbage buffers behind check=False
  A = js.from_coo(np.full((6, 2), 9, np.int32), np.ones(6, np.float32), (4, 5), format="coo",
                  nse=6, check=False)
  assert not paths.decode(A.asformat("csc")).any()
  small = jax.jit(lambda i: js.from_coo(i, jnp.ones(5), (4, 4), format="csr", nse=2,
                                        check=False))(
      np.array([[0, 0], [1, 1], [2, 2], [3, 3], [0, 1]], np.int32))
  assert np.isnan(np.asarray(small.data)).all()
  garbage_pos = jnp.array([0, 7, 2, 9, 1, 100, -5], jnp.int32)          # not monotone
  garbage_crd = jnp.array([3, -1, 9, 0, 2, 2, 4, 1, 0], jnp.int32)
  B = js.SparseArray.from_buffers(jnp.ones(9), [garbage_pos, garbage_crd], shape=(6, 5),
                                  format="csr", check=False)
  for dst in ("csc", "coo", "dcsr"):
    jax.block_until_ready(jax.jit(lambda B: B.asformat(dst, nse=9))(B).data)
  decisions = [d for _, d in structure_kernel.last_decisions]
  assert "kernel" in decisions, decisions
  kernels += decisions.count("kernel")


def main():
  assert kernel_build.active_flags() == kernel_build.SANITIZE_FLAGS, "JSCORCH_SANITIZE unset"
  assert js.config.lowering == "auto"
  if sys.argv[1:] == ["structure"]:
    structure_matrix()
    print(f"MATRIX OK {kernels}", flush=True)
    return
  case_matrix()            # (the structure and union kernels run in tests of their own)
  gradient_matrix()
  adversarial()
  power_law()
  print(f"MATRIX OK {kernels}", flush=True)


if __name__ == "__main__":
  main()
