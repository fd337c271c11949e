"""Tests of jscorch/ops.py and the SparseArray operators (@, *, /, +, -, **, sum, neg).

Every operator runs on fresh random data stored with padding, in CSR, CSC, COO,
DCSR and a batched CSR, and is compared with float64 numpy references: eagerly and
under ``jit``; under ``vmap`` against a stacked loop of references (``in_axes`` with
``None``); with ``check_grads`` (second order, forward and reverse) on a
deterministic sample of formats; and with ``eval_shape``. Union results are checked
structurally (exact capacity, no duplicates, storage order). Every user-facing
error message is matched.

All tests run with ``jax_enable_x64`` (autouse fixture), so tolerances are those of
float64; one test checks that float32 stays float32. Conversions used only by the
tests (``from_dense``, ``todense``, ...) are jitted once per layout to keep the
suite fast.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sps
from jax.test_util import check_grads

import jscorch as js
from jscorch.primitives import SparseCapacityError

import util

F64 = np.float64

# -- compiled test helpers (one compile per layout instead of op-by-op dispatch) ---------------
todense = jax.jit(lambda A: A.todense())
nnz = jax.jit(lambda A: A.nnz)
from_dense = jax.jit(js.from_dense, static_argnames=("format", "nse", "n_batch", "n_dense"))
from_coo = jax.jit(js.from_coo, static_argnames=("shape", "format", "nse", "check"))
asformat = jax.jit(js.SparseArray.asformat, static_argnums=1)


def random_sparse(seed, shape, fmt, *, n_batch=0, padding=2, density=0.5, dtype=F64):
  """``util.random_sparse`` with a compiled ``from_dense``."""
  x = util.random_dense(seed, shape, n_batch=n_batch, density=density, dtype=dtype)
  nse = util.stored_count(x, n_batch) + padding
  return from_dense(x, format=fmt, nse=nse, n_batch=n_batch), x


def dense(x):
  return todense(x) if js.is_sparse(x) else x


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def skip_if_portable(request, why="einsum-free: the lowering setting does not apply"):
  """This module runs under both einsum lowerings (conftest); einsum-free tests run once."""
  callspec = getattr(request.node, "callspec", None)
  if callspec is not None and callspec.params.get("lowering") == "portable":
    pytest.skip(why)


@pytest.fixture
def einsum_free(request):
  skip_if_portable(request)


# -- operands ----------------------------------------------------------------------------------
CASES = {
    "csr": (js.CSR, 0),
    "csc": (js.CSC, 0),
    "coo": (js.COO, 0),
    "dcsr": (js.DCSR, 0),
    "csr_batched": (js.CSR, 1),
}


@functools.lru_cache(maxsize=None)
def operands(case: str, seed: int = 0):
  """``(ops, refs)``: SparseArrays ``A``, ``B`` (other nse) and dense operands, and references."""
  fmt, nb = CASES[case]
  shape = (2,) * nb + (4, 5)
  with jax.enable_x64(True):
    A, x = random_sparse(seed, shape, fmt, n_batch=nb, padding=2)
    B, y = random_sparse(seed + 1, shape, fmt, n_batch=nb, padding=1)
    rng = np.random.default_rng(seed + 2)
    dense_ops = dict(M=(5, 3), L=(3, 4), R=(5,), C=(4, 1), F=shape)
    dense_ops = {k: util.random_values(rng, s, F64) for k, s in dense_ops.items()}
    ops = dict(A=A, B=B, **{k: jnp.asarray(v) for k, v in dense_ops.items()})
  refs = dict(A=x, B=y, **dense_ops)
  return ops, refs


def swap(x):
  """Transposes the last two axes (numpy or SparseArray)."""
  if js.is_sparse(x):
    return x.transpose(tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2))
  return np.swapaxes(x, -1, -2)


# name -> (operation on ops, the same on float64 references, result kind)
# kind: "sampled" (A's pattern), "union" (a new sparse pattern), "dense".
OPS = {
    "matmul": (lambda o: o["A"] @ o["M"], lambda r: r["A"] @ r["M"], "dense"),
    "rmatmul": (lambda o: o["L"] @ o["A"], lambda r: r["L"] @ r["A"], "dense"),
    "matvec": (lambda o: o["A"] @ o["R"], lambda r: r["A"] @ r["R"], "dense"),
    "dot": (lambda o: js.dot(o["A"], o["M"]), lambda r: np.dot(r["A"], r["M"]), "dense"),
    "mul_dense": (lambda o: o["A"] * o["F"], lambda r: r["A"] * r["F"], "sampled"),
    "mul_row": (lambda o: o["A"] * o["R"], lambda r: r["A"] * r["R"], "sampled"),
    "mul_col": (lambda o: o["C"] * o["A"], lambda r: r["C"] * r["A"], "sampled"),
    "mul_scalar": (lambda o: (2.5 * o["A"]) * 2, lambda r: 5 * r["A"], "sampled"),
    "mul_sparse": (lambda o: o["A"] * o["B"], lambda r: r["A"] * r["B"], "sampled"),
    "div_dense": (lambda o: o["A"] / o["F"], lambda r: r["A"] / r["F"], "sampled"),
    "div_col": (lambda o: o["A"] / o["C"], lambda r: r["A"] / r["C"], "sampled"),
    "div_scalar": (lambda o: o["A"] / 4, lambda r: r["A"] / 4, "sampled"),
    "neg": (lambda o: -o["A"], lambda r: -r["A"], "sampled"),
    "pow": (lambda o: o["A"] ** 3, lambda r: r["A"] ** 3, "sampled"),
    "abs": (lambda o: abs(o["A"]), lambda r: np.abs(r["A"]), "sampled"),
    "add_sparse": (lambda o: o["A"] + o["B"], lambda r: r["A"] + r["B"], "union"),
    "sub_sparse": (lambda o: o["A"] - o["B"], lambda r: r["A"] - r["B"], "union"),
    "add_dense": (lambda o: o["A"] + o["F"], lambda r: r["A"] + r["F"], "dense"),
    "rsub_dense": (lambda o: o["F"] - o["A"], lambda r: r["F"] - r["A"], "dense"),
    "add_scalar": (lambda o: o["A"] + 1.5, lambda r: r["A"] + 1.5, "dense"),
    "sum_all": (lambda o: o["A"].sum(), lambda r: r["A"].sum(), "dense"),
    "sum_axis": (lambda o: o["A"].sum(axis=-1), lambda r: r["A"].sum(axis=-1), "dense"),
    "sum_keepdims": (lambda o: js.sum(o["A"], axis=(0, -1), keepdims=True),
                     lambda r: r["A"].sum(axis=(0, -1), keepdims=True), "dense"),
}


# Ops that never reach the einsum (scalars, unary maps, unions, dense sums).
EINSUM_FREE = {"mul_scalar", "div_scalar", "neg", "pow", "abs", "add_sparse", "sub_sparse",
               "add_dense", "rsub_dense", "add_scalar"}


def check(got, expected, A, kind, err_msg=""):
  assert js.is_sparse(got) == (kind != "dense"), err_msg
  if kind == "sampled":
    assert got.format == A.format and got.nse == A.nse, err_msg
    for g, a in zip(got.indices, A.indices):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(a), err_msg=err_msg)
  util.assert_allclose(dense(got), np.asarray(expected, F64), dtype=F64, err_msg=err_msg)


# Every op on CSR and the batched CSR, and on one of CSC / COO / DCSR in turn.
OP_CASES = [(name, case) for k, name in enumerate(OPS)
            for case in ("csr", "csr_batched", ("csc", "coo", "dcsr")[k % 3])]


@pytest.mark.parametrize("name, case", OP_CASES, ids=[f"{n}-{c}" for n, c in OP_CASES])
def test_op_eager(name, case, request):
  if name in EINSUM_FREE:
    skip_if_portable(request)
  o, r = operands(case)
  fn, ref, kind = OPS[name]
  check(fn(o), ref(r), o["A"], kind)


@pytest.mark.parametrize("case", list(CASES))
def test_ops_under_jit(case):
  """Every op on every case, in one jitted function per case (one compile)."""
  o, r = operands(case)
  results = jax.jit(lambda o: {name: fn(o) for name, (fn, _, _) in OPS.items()})(o)
  for name, (_, ref, kind) in OPS.items():
    check(results[name], ref(r), o["A"], kind, err_msg=name)


def test_eval_shape():
  o, r = operands("csr_batched")
  for name, (fn, ref, kind) in OPS.items():
    s = jax.eval_shape(fn, o)
    expected = ref(r)
    assert js.is_sparse(s) == (kind != "dense"), name
    assert s.shape == expected.shape and s.dtype == F64, name
    if kind == "sampled":
      assert s.format == o["A"].format and s.nse == o["A"].nse, name
    if kind == "union":            # traced index buffers: capacity nse(A) + nse(B)
      assert s.nse == o["A"].nse + o["B"].nse, name


# -- sparse @ sparse ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["csr", "csr_batched"])
def test_sparse_matmul(case):
  o, r = operands(case)
  A, Bt = o["A"], asformat(swap(o["B"]), o["B"].format)
  C = A @ Bt
  expected = r["A"] @ swap(r["B"])
  assert js.is_sparse(C)
  util.assert_allclose(todense(C), expected, dtype=F64)
  # A new pattern: exactly the structural nonzeros of the product.
  mask = (r["A"] != 0).astype(int) @ (swap(r["B"]) != 0).astype(int)
  assert C.nse == (mask > 0).reshape(mask.shape[:-2] + (-1,)).sum(-1).max()
  f = jax.jit(lambda A, B: js.matmul(A, B, nse=16, work=A.nse * 4))
  util.assert_allclose(dense(f(A, Bt)), expected, dtype=F64)
  if case == "csr":
    ref = sps.csr_matrix(r["A"]) @ sps.csr_matrix(swap(r["B"]))
    util.assert_allclose(todense(C), ref.toarray(), dtype=F64)
    assert C.nse == ref.nnz


def test_sparse_matmul_under_jit_needs_capacities():
  o, _ = operands("csr")
  A, B = o["A"], asformat(swap(o["B"]), "csr")
  with pytest.raises(ValueError, match=r"matmul: .*js\.matmul\(A, B, nse=\.\.\., work=\.\.\.\)"):
    jax.jit(lambda A, B: A @ B)(A, B)


def test_scipy_references():
  o, r = operands("csr")
  A, B = o["A"], o["B"]
  a, b = sps.csr_matrix(r["A"]), sps.csr_matrix(r["B"])
  util.assert_allclose(A @ o["M"], a @ r["M"], dtype=F64)
  util.assert_allclose(todense(A * B), a.multiply(b).toarray(), dtype=F64)
  C = A + B
  util.assert_allclose(todense(C), (a + b).toarray(), dtype=F64)
  assert int(nnz(C)) == (a + b).nnz


# -- vmap --------------------------------------------------------------------------------------
VMAPS = {
    # name -> (function, reference, in_axes, operand names); in_axes None = shared operand
    "matmul": (lambda A, M: A @ M, lambda x, M: x @ M, (0, None), "AM"),
    "rmatmul": (lambda L, A: L @ A, lambda L, x: L @ x, (0, None), "LA"),
    "mul_dense": (lambda A, F: A * F, lambda x, F: x * F, (0, 0), "AF"),
    "mul_row": (lambda A, R: A * R, lambda x, R: x * R, (0, None), "AR"),
    "mul_sparse": (lambda A, B: A * B, lambda x, y: x * y, (0, 0), "AB"),
    "div_dense": (lambda A, F: A / F, lambda x, F: x / F, (None, 0), "AF"),
    "add_sparse": (lambda A, B: A + B, lambda x, y: x + y, (0, None), "AB"),
    "sub_sparse": (lambda A, B: A - B, lambda x, y: x - y, (0, 0), "AB"),
    "sum_axis": (lambda A: A.sum(axis=0), lambda x: x.sum(axis=0), (0,), "A"),
    "spsp": (lambda A, B: js.matmul(A, B, nse=20, work=60), lambda x, y: x @ y, (0, None),
             "AB"),
}


@pytest.mark.parametrize("name", list(VMAPS))
def test_vmap_matches_loop(name, request):
  if name in EINSUM_FREE:
    skip_if_portable(request)
  fn, ref, in_axes, names = VMAPS[name]
  ob, rb = operands("csr_batched")
  ou, ru = operands("csr")
  rng = np.random.default_rng(7)
  L = util.random_values(rng, (2, 3, 4), F64)
  batched = dict(ob, L=jnp.asarray(L)), dict(rb, L=L)
  shared = ou, ru
  if name == "spsp":
    shared = dict(ou, B=asformat(swap(ou["B"]), "csr")), dict(ru, B=swap(ru["B"]))
  args = [(batched if ax == 0 else shared)[0][n] for n, ax in zip(names, in_axes)]
  refs = [(batched if ax == 0 else shared)[1][n] for n, ax in zip(names, in_axes)]
  got = jax.vmap(fn, in_axes=in_axes)(*args)
  loop = [ref(*[r[i] if ax == 0 else r for r, ax in zip(refs, in_axes)]) for i in range(2)]
  util.assert_allclose(dense(got), np.stack(loop), dtype=F64)


# -- gradients ---------------------------------------------------------------------------------
GRADS = {  # case -> ops: each op once, formats sampled deterministically
    "csr": ["matmul", "div_dense", "mul_sparse", "sum_keepdims", "abs"],
    "csc": ["rmatmul", "mul_col", "add_sparse", "dot", "rsub_dense"],
    "csr_batched": ["mul_row", "pow", "sub_sparse", "sum_axis", "mul_dense", "div_col",
                    "add_dense"],
}


@pytest.mark.parametrize("case", list(GRADS))
def test_check_grads(case):
  """Second order, forward and reverse, w.r.t. both sparse operands' values and a dense one."""
  o, _ = operands(case)
  A, B, F = o["A"], o["B"], o["F"]
  others = {k: v for k, v in o.items() if k not in "ABF"}

  @jax.jit
  def f(a, b, F):
    ops = dict(A=A.with_data(a), B=B.with_data(b), F=F, **others)
    results = [OPS[name][0](ops) for name in GRADS[case]]
    return [r.todense() if js.is_sparse(r) else r for r in results]

  util.check_grads_both(f, (A.data, B.data, F))


def test_check_grads_sparse_matmul(request):
  """Forward first order, reverse second order, generated kernels (the other orders, and
  the portable lowering, of a sparse x sparse einsum are left to tests/test_einsum.py:
  they cost several times more to compile)."""
  skip_if_portable(request, "sparse x sparse gradients of the portable lowering: test_einsum")
  o, _ = operands("csr")
  A, Bt = o["A"], asformat(swap(o["B"]), "csr")
  nse = (A @ Bt).nse

  @jax.jit
  def f(a, b):
    return js.matmul(A.with_data(a), Bt.with_data(b), nse=nse, work=A.nse * 4).data

  check_grads(f, (A.data, Bt.data), order=1, modes=("fwd",))
  check_grads(f, (A.data, Bt.data), order=2, modes=("rev",))


def test_gradient_keeps_pattern():
  o, _ = operands("coo")
  A, B, F = o["A"], o["B"], o["F"]
  g = js.grad(lambda A, B: ((A + B) * F).sum(), argnums=(0, 1))(A, B)
  for grad, X in zip(g, (A, B)):
    assert grad.format == X.format and grad.nse == X.nse
    expected = np.where(np.asarray(todense(X)) != 0, np.asarray(F), 0)
    util.assert_allclose(todense(grad), expected, dtype=F64)


# -- union structure ---------------------------------------------------------------------------
@pytest.mark.usefixtures("einsum_free")
@pytest.mark.parametrize("case", ["csr", "csc", "coo", "dcsr"])
def test_union_is_exact_and_unique(case):
  o, r = operands(case)
  A, B = o["A"], o["B"]
  C = A + B
  pattern = (r["A"] != 0) | (r["B"] != 0)
  assert C.format == A.format
  assert C.nse == int(pattern.sum()) == int(nnz(C))      # exact capacity, no padding
  coords = util.stored_coordinates(C)
  assert len({tuple(c) for c in coords}) == len(coords)  # no duplicates
  order = [tuple(c[list(C.format.mode_ordering)]) for c in coords]
  assert order == sorted(order)                          # storage order
  stored = np.zeros(pattern.shape, bool)
  stored[tuple(coords.T)] = True
  np.testing.assert_array_equal(stored, pattern)


@pytest.mark.usefixtures("einsum_free")
def test_union_under_jit_has_padding_capacity():
  o, r = operands("csr")
  A, B = o["A"], o["B"]
  C = jax.jit(lambda A, B: A + B)(A, B)
  assert C.nse == A.nse + B.nse
  assert int(nnz(C)) == int(((r["A"] != 0) | (r["B"] != 0)).sum())
  util.assert_allclose(todense(C), r["A"] + r["B"], dtype=F64)
  D = jax.jit(functools.partial(js.add, nse=30))(A, B)
  assert D.nse == 30
  util.assert_allclose(todense(D), r["A"] + r["B"], dtype=F64)


@pytest.mark.usefixtures("einsum_free")
def test_union_batched_and_cancellation():
  o, r = operands("csr_batched")
  A = o["A"]
  C = A + o["B"]
  per = ((r["A"] != 0) | (r["B"] != 0)).reshape(2, -1).sum(-1)
  assert C.nse == per.max() and C.n_batch == 1
  np.testing.assert_array_equal(np.asarray(nnz(C)), per)
  Z = A - A                                # explicit zeros: the pattern of A, values 0
  assert Z.nse == A.nse - 2
  np.testing.assert_array_equal(np.asarray(nnz(Z)), np.asarray(nnz(A)))
  np.testing.assert_array_equal(np.asarray(Z.data), 0)


DUPLICATES = (np.array([[0, 1], [2, 3], [0, 1], [1, 1]]), np.array([1., 2., 3., 4.]))


@pytest.mark.usefixtures("einsum_free")
def test_union_mixed_formats_and_nonunique():
  o, r = operands("csr")
  C = o["A"] + asformat(o["B"], "csc")
  assert C.format == js.CSR
  util.assert_allclose(todense(C), r["A"] + r["B"], dtype=F64)
  D = from_coo(*DUPLICATES, shape=(4, 5), format=util.UNORDERED_COO, nse=5)  # keeps duplicates
  E = D + o["A"]
  assert E.format == js.COO                # duplicates merged: the ordered, unique COO
  coords = util.stored_coordinates(E)
  assert len({tuple(c) for c in coords}) == len(coords) == E.nse
  util.assert_allclose(todense(E), np.asarray(todense(D)) + r["A"], dtype=F64)


@pytest.mark.usefixtures("einsum_free")
def test_union_capacity_errors():
  o, r = operands("csr")
  needed = int(((r["A"] != 0) | (r["B"] != 0)).sum())
  with pytest.raises(SparseCapacityError, match=rf"add: the union needs {needed} .*nse=3"):
    js.add(o["A"], o["B"], nse=3)
  C = js.add(o["A"], o["B"], nse=needed + 4)
  assert C.nse == needed + 4 and int(nnz(C)) == needed


def test_nonunique_sampled_product_is_coalesced():
  D = from_coo(*DUPLICATES, shape=(4, 5), format=util.UNORDERED_COO, nse=5)
  o, r = operands("csr")
  for got in (D * o["F"], jax.jit(lambda D, F: D * F)(D, o["F"]), D / o["F"], D * D):
    assert got.format.unique
  d = np.asarray(todense(D))
  util.assert_allclose(todense(D * o["F"]), d * r["F"], dtype=F64)
  util.assert_allclose(todense(D * D), d ** 2, dtype=F64)


# -- broadcasting and mixed operands -----------------------------------------------------------
def test_broadcast_adds_batch_dims():
  o, r = operands("csr")
  X = util.random_values(3, (3, 4, 5), F64)
  P = o["A"] * jnp.asarray(X)
  assert P.n_batch == 1 and P.shape == (3, 4, 5) and P.nse == o["A"].nse
  util.assert_allclose(todense(P), r["A"] * X, dtype=F64)
  util.assert_allclose(todense(o["A"] * jnp.ones((1, 1))), r["A"], dtype=F64)


def test_numpy_arrays_on_the_left():
  o, r = operands("csr")
  util.assert_allclose(todense(r["F"] * o["A"]), r["F"] * r["A"], dtype=F64)
  util.assert_allclose(r["F"] + o["A"], r["F"] + r["A"], dtype=F64)
  util.assert_allclose(r["L"] @ o["A"], r["L"] @ r["A"], dtype=F64)


def test_float32_stays_float32():
  with jax.enable_x64(False):
    A, _ = random_sparse(3, (4, 5), "csr", dtype=np.float32)
    assert (A * 2.0).dtype == (A * jnp.ones(5)).dtype == (A + A).dtype == jnp.float32
    assert (A @ jnp.ones((5, 2))).dtype == A.sum().dtype == jnp.float32
    assert (A.astype(jnp.int32) * 1.5).dtype == jnp.float32
    bools = A.astype(bool)
    assert js.sum(bools).dtype == jnp.sum(jnp.ones(1, bool)).dtype
    assert int(js.sum(bools)) == 10


@pytest.mark.usefixtures("einsum_free")
def test_concatenate():
  o, r = operands("dcsr")
  A, B = o["A"], o["B"]
  for axis in (0, -1):
    C = js.concatenate([A, B], axis=axis)
    assert C.nse == A.nse + B.nse and C.format == A.format
    util.assert_allclose(todense(C), np.concatenate([r["A"], r["B"]], axis=axis), dtype=F64)
  ob, rb = operands("csr_batched")
  C = js.concatenate([ob["A"], ob["B"]], axis=0)
  assert C.n_batch == 1 and C.shape == (4, 4, 5)
  util.assert_allclose(todense(C), np.concatenate([rb["A"], rb["B"]]), dtype=F64)
  ga, gb = js.grad(lambda A, B: (js.concatenate([A, B], axis=1).todense() ** 2).sum(),
                   argnums=(0, 1))(A, B)
  util.assert_allclose(todense(ga), 2 * r["A"], dtype=F64)
  util.assert_allclose(todense(gb), 2 * r["B"], dtype=F64)


@pytest.mark.usefixtures("einsum_free")
@pytest.mark.parametrize("mode", ["auto", "portable"])
def test_concatenate_keeps_padding_out(mode):
  """A 1-D operand's padding coordinate (its size) is the next operand's first coordinate
  once shifted: it stays padding whatever value it holds (values, nnz, gradient, batched)."""
  x = np.array([0., 1.5, 0., -2.])
  with util.use_lowering(mode):
    A = js.from_dense(x, format=js.Format(js.compressed), nse=4)     # 2 padding slots
    B = A.with_data(A.data.at[2:].set(7.))                            # ignored values
    for C in [js.concatenate([B, B]), jax.jit(lambda B: js.concatenate([B, B, B]))(B)]:
      assert int(C.nnz) == C.shape[0] // 2
      util.assert_allclose(todense(C), np.tile(x, C.shape[0] // 4), dtype=F64)
    g = jax.grad(lambda d: js.concatenate([A.with_data(d), A]).todense().sum())(A.data)
    np.testing.assert_array_equal(g, [1, 1, 0, 0])
    Ab = js.from_dense(np.stack([x, -x]), format=js.Format(js.compressed), nse=4, n_batch=1)
    Ab = Ab.with_data(Ab.data.at[:, 2:].set(7.))
    C = js.concatenate([Ab, Ab], axis=1)
    np.testing.assert_array_equal(np.asarray(nnz(C)), [4, 4])
    util.assert_allclose(todense(C), np.stack([np.tile(x, 2), -np.tile(x, 2)]), dtype=F64)


@pytest.mark.usefixtures("einsum_free")
def test_empty_operands():
  """Zero capacity and zero-size dims in unions and batched slices (no reshape may infer
  a -1 next to a 0)."""
  for shape, fmt in [((3,), js.Format(js.compressed)), ((0, 3), js.COO),
                     ((2, 0, 3), js.Format(js.compressed, js.compressed, js.compressed))]:
    A = js.from_dense(np.zeros(shape), format=fmt, nse=0)
    for C in [A + A, A - A, js.maximum(A, A)]:
      assert C.shape == shape and C.nse == 0
  E = js.from_dense(np.zeros((2, 0)), format=js.Format(js.compressed), nse=1, n_batch=1)
  for C in [E + E, js.minimum(E, E)]:
    assert C.shape == (2, 0)
  x = np.array([[0., 1., 0., 2.], [3., 0., 0., 0.]])
  A = js.from_dense(x, format=js.Format(js.compressed), nse=3, n_batch=1)
  for lo, hi in [(1, 1), (1, 4)]:
    S = jax.vmap(lambda B, lo=lo, hi=hi: B[lo:hi])(A)
    util.assert_allclose(todense(S), x[:, lo:hi], dtype=F64)


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.usefixtures("einsum_free")
def test_error_messages():
  o, _ = operands("csr")
  A, B = o["A"], o["B"]
  with pytest.raises(ValueError, match=r"multiply: .*a\.shape=\(4, 5\), b\.shape=\(3,\)"):
    A * jnp.ones(3)
  with pytest.raises(ValueError, match=r"multiply: .*a\.shape=\(4, 5\), b\.shape=\(5, 4\)"):
    A * B.T
  with pytest.raises(ValueError, match=r"add: .*a\.shape=\(4, 5\), b\.shape=\(5, 4\)"):
    A + B.T
  with pytest.raises(ValueError, match=r"subtract: .*a\.shape=\(4, 5\), b\.shape=\(3, 5\)"):
    A - jnp.ones((3, 5))
  with pytest.raises(ValueError, match=r"matmul: contracted .*a\.shape=\(4, 5\), "
                                       r"b\.shape=\(4, 3\)"):
    A @ jnp.ones((4, 3))
  with pytest.raises(TypeError, match=r"divide: .*b\.todense\(\)"):
    jnp.ones((4, 5)) / A
  with pytest.raises(ValueError, match=r"power: .*p > 0.*todense\(\)"):
    A ** 0
  with pytest.raises(ValueError, match=r"power: .*p=-1"):
    A ** -1
  with pytest.raises(TypeError, match=r"power: .*traced"):
    jax.jit(lambda A, p: A ** p)(A, 2.0)
  with pytest.raises(TypeError, match=r"power: .*todense"):
    2.0 ** A
  row = from_dense(np.ones((1, 5)), format="csr", nse=5)
  with pytest.raises(ValueError, match=r"multiply: a sparse dimension cannot broadcast"):
    row * jnp.ones((3, 5))
  with pytest.raises(TypeError, match=r"add: nse= .*dense"):
    js.add(A, o["F"], nse=3)
  with pytest.raises(ValueError, match=r"sum: axis out of range; got axis=2"):
    A.sum(axis=2)
  with pytest.raises(TypeError, match=r"concatenate: .*all SparseArrays or all dense"):
    js.concatenate([A, o["F"]])
  ob, _ = operands("csr_batched")
  with pytest.raises(ValueError, match=r"add: .*n_batch=1.*n_batch=0"):
    js.add(ob["A"], from_dense(np.ones((2, 4, 5)), format="coo", nse=40))
  with pytest.raises(TypeError, match=r"matmul: \['out_sharding'\] not supported"):
    js.matmul(A, o["M"], out_sharding="x")
  assert A.__mul__("text") is NotImplemented
