"""Edge cases of ``js.einsum`` (issue 15), run with both lowerings (kernel and portable).

* capacities of batched and ``vmap``-ped sparse x sparse products (and of their
  tangents and cotangents) cover every batch element; an under-capacity is never
  silent (eager: an error; ``jit``: NaN values);
* all-dense level formats as ``out_format`` and as operands (the kernel's driver);
* ``out_format`` honoured when no operand is sparse;
* patterns with ``nse == 0`` (empty products, their gradients).

Values are compared with float64 numpy references; every test runs in 64-bit mode.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
from jscorch.primitives import einsum_kernel, kernel_build
from jscorch.primitives._errors import (CapacityRequiredError, SparseCapacityError,
                                         SparseFormatError)

import util

F64 = np.float64


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def once(lowering):
  """Skips the portable run of a test whose einsums take the same path in both."""
  if lowering == "portable":
    pytest.skip("lowering-independent: its einsums run portably under 'auto' too, or it "
                "tests js.einsum's output inference")


def sp(seed, shape, fmt, **kw):
  return util.random_sparse(seed, shape, fmt, dtype=F64, **kw)


def dn(seed, *shape):
  return util.random_values(seed, shape, F64)


def dense_basis(A) -> np.ndarray:
  """``[A.data.size, *A.shape]``: the dense array of each unit vector of ``A.data``."""
  eye = jnp.eye(A.data.size, dtype=A.data.dtype).reshape((-1,) + A.data.shape)
  return np.asarray(_basis_todense(eye, A))


_basis_todense = jax.jit(jax.vmap(lambda e, A: A.with_data(e).todense(), in_axes=(0, None)))


def numpy_jacobians(subscripts, A, a, B, b):
  """Jacobians of ``einsum(subscripts, A, B)`` w.r.t. ``A.data`` and ``B.data`` (numpy)."""
  ja = np.stack([np.einsum(subscripts, e, b) for e in dense_basis(A)], -1)
  jb = np.stack([np.einsum(subscripts, a, e) for e in dense_basis(B)], -1)
  return ja.reshape(ja.shape[:-1] + A.data.shape), jb.reshape(jb.shape[:-1] + B.data.shape)


# -- 1. capacities of batched / vmapped sparse x sparse products ------------------------------
BATCHED = [
    pytest.param("bca,ad->bcd", ((2, 3, 4), 1, "csr"), ((4, 5), 0, "csr"), id="lhs_batched_csr"),
    pytest.param("ca,bad->bcd", ((3, 4), 0, "coo"), ((2, 4, 5), 1, "dcsr"),
                 id="rhs_batched_coo_dcsr"),
]


def _operands(a_spec, b_spec):
  (sa, nba, fa), (sb, nbb, fb) = a_spec, b_spec
  A, a = sp(0, sa, fa, n_batch=nba)
  B, b = sp(1, sb, fb, n_batch=nbb)
  return A, a, B, b


def _exact_capacities(subscripts, a, b):
  """``(nse, work)`` of the batched product: the most result entries of a batch element
  and the matching entry pairs of all elements together (numpy)."""
  terms, out = subscripts.split("->")
  ta, tb = terms.split(",")
  letters = "".join(dict.fromkeys(ta + tb))
  pairs = int(np.einsum(f"{ta},{tb}->{letters}", a != 0, b != 0).sum())
  nnz = np.einsum(subscripts, np.abs(a), np.abs(b)) != 0
  return int(nnz.reshape(nnz.shape[0], -1).sum(-1).max()), pairs


@pytest.mark.parametrize("subscripts, a_spec, b_spec", BATCHED)
def test_jacobians_of_batched_times_unbatched_sparse_product(subscripts, a_spec, b_spec,
                                                             lowering):
  if subscripts != BATCHED[0].values[0]:
    once(lowering)
  A, a, B, b = _operands(a_spec, b_spec)
  ja, jb = numpy_jacobians(subscripts, A, a, B, b)

  def f(da, db, A, B, **caps):
    return js.einsum(subscripts, A.with_data(da), B.with_data(db), **caps).todense()

  util.assert_allclose(f(A.data, B.data, A, B), np.einsum(subscripts, a, b), F64)
  for jac in (jax.jacfwd, jax.jacrev):     # patterns closed over: capacities sized exactly
    got_a, got_b = jax.jit(jac(lambda da, db: f(da, db, A, B), argnums=(0, 1)))(A.data, B.data)
    util.assert_allclose(got_a, ja, F64, err_msg=jac.__name__)
    util.assert_allclose(got_b, jb, F64, err_msg=jac.__name__)
  # Under jit with traced patterns: the capacities given for the batched product also
  # serve its tangents; one too few poisons the result (never silently wrong).
  if lowering == "portable":
    return
  nse, work = _exact_capacities(subscripts, a, b)
  for caps, ok in ((dict(nse=nse, work=work), True), (dict(nse=nse, work=work - 1), False),
                   (dict(nse=nse - 1, work=work), False)):
    got_a, got_b = jax.jit(jax.jacfwd(lambda da, db, A, B: f(da, db, A, B, **caps),
                                      argnums=(0, 1)))(A.data, B.data, A, B)
    if ok:
      util.assert_allclose(got_a, ja, F64)
      util.assert_allclose(got_b, jb, F64)
    else:
      assert np.isnan(np.asarray(got_a)).any() and np.isnan(np.asarray(got_b)).any(), caps


@pytest.mark.parametrize("subscripts, a_spec, b_spec", BATCHED[:1])
def test_check_grads_of_batched_sparse_product(subscripts, a_spec, b_spec, lowering):
  once(lowering)
  A, a, B, b = _operands(a_spec, b_spec)
  w = dn(3, *np.einsum(subscripts, a, b).shape)
  f = lambda da, db: jnp.sum(js.einsum(subscripts, A.with_data(da), B.with_data(db)).todense()
                             * w)
  util.check_grads_both(f, (A.data, B.data))


@pytest.mark.parametrize("subscripts, a_spec, b_spec", BATCHED)
def test_batched_sparse_product_too_small_capacities_raise_eagerly(subscripts, a_spec,
                                                                   b_spec):
  A, a, B, b = _operands(a_spec, b_spec)
  nse, work = _exact_capacities(subscripts, a, b)
  C = js.einsum(subscripts, A, B)
  assert C.nse == nse and C.n_batch == 1
  with pytest.raises(SparseCapacityError, match=f"needs nse={nse} but nse={nse - 1}"):
    js.einsum(subscripts, A, B, nse=nse - 1)
  if js.config.lowering == "portable":        # the CSR kernel needs no join capacity
    with pytest.raises(SparseCapacityError, match=f"needs work={work} but work={work - 1}"):
      js.einsum(subscripts, A, B, work=work - 1)


def test_vmap_of_sparse_product_with_per_element_capacities(lowering):
  """``vmap`` over a batched operand's batch dim (patterns batched), the other operand
  shared (``in_axes=None``, broadcast): ``nse`` and ``work`` are per element and cover them
  all. ``work`` bounds the portable join only: the batched CSR kernel has none to overflow."""
  once(lowering)
  A, a, B, b = _operands(((3, 3, 4), 1, "csr"), ((4, 5), 0, "csr"))
  per = [_exact_capacities("bca,ad->bcd", a[i][None], b) for i in range(3)]
  nse, work = max(n for n, _ in per), max(w for _, w in per)
  want = np.einsum("bca,ad->bcd", a, b)

  def run(nse, work):
    f = lambda A, B: js.einsum("ca,ad->cd", A, B, nse=nse, work=work).todense()
    return jax.jit(jax.vmap(f, in_axes=(0, None)))(A, B)

  util.assert_allclose(run(nse, work), want, F64)
  for caps in ((nse - 1, work), (nse, work - 1)):
    got = np.asarray(run(*caps))
    if caps[0] == nse and js.config.lowering != "portable":
      util.assert_allclose(got, want, F64)
      continue
    assert np.isnan(got).any() and not np.isnan(got[want == 0]).any(), caps
  # vmap of jacfwd: the tangent of every element, against numpy.
  jac = jax.jit(jax.vmap(jax.jacfwd(lambda d, A: js.einsum(
      "ca,ad->cd", A.with_data(d), B, nse=nse, work=work).todense()), in_axes=(0, 0)))
  got = jac(A.data, A)
  for i in range(3):
    Ai = util.element(A, i)
    want_i = np.stack([e @ b for e in dense_basis(Ai)], -1).reshape((3, 5) + Ai.data.shape)
    util.assert_allclose(got[i], want_i, F64)


# -- 2. all-dense level formats ---------------------------------------------------------------
DD = js.Format(js.dense, js.dense)
DD_T = js.Format(js.dense, js.dense, mode_ordering=(1, 0))
ALL_DENSE = [pytest.param(DD, id="dense_dense"), pytest.param(DD_T, id="dense_dense_col_major")]


def _storage_data(x, fmt):
  """The values of an all-dense 2-D ``fmt`` holding ``x``: ``x`` in storage order, flat."""
  return np.transpose(x, fmt.mode_ordering).reshape(-1)


@pytest.mark.parametrize("fmt", ALL_DENSE)
def test_all_dense_out_format(fmt, lowering):
  once(lowering)
  A, a = sp(0, (4, 5), "csr")
  B, b = sp(1, (5, 3), "dcsr")
  x = dn(2, 5, 3)
  for ops, refs in (((A, B), (a, b)), ((A, x), (a, x))):
    want = a @ (b if ops[1] is B else x)
    C = js.einsum("ij,jk->ik", *ops, out_format=fmt)
    assert C.format == fmt and C.indices == () and C.nse == 12
    util.assert_allclose(C.data, _storage_data(want, fmt), F64)
    util.assert_allclose(C.todense(), want, F64)
  f = jax.jit(lambda da, x: js.einsum("ij,jk->ik", A.with_data(da), x, out_format=fmt).data)
  util.assert_allclose(f(A.data, x), _storage_data(a @ x, fmt), F64)
  out = jax.eval_shape(f, A.data, x)
  assert out.shape == (12,) and out.dtype == F64
  util.check_grads_both(f, (A.data, x))
  # A batched all-dense result: the batch count comes from the format or the operands.
  Ab, ab = sp(3, (2, 4, 5), "csr", n_batch=1)
  for out_format in (fmt, fmt.replace(n_batch=1)):
    C = js.einsum("bij,jk->bik", Ab, B, out_format=out_format)
    assert C.format == fmt.replace(n_batch=1) and C.data.shape == (2, 12)
    util.assert_allclose(C.todense(), np.einsum("bij,jk->bik", ab, b), F64)
  with pytest.raises(SparseFormatError, match="stores every coordinate; got nse=5"):
    js.einsum("ij,jk->ik", A, x, out_format=fmt, nse=5)


@pytest.mark.parametrize("fmt", ALL_DENSE)
def test_all_dense_operand_drives_the_kernel(fmt):
  a = dn(0, 4, 5)
  A = js.from_dense(a, fmt)
  x, u, v, y = dn(1, 5, 3), dn(2, 4, 6), dn(3, 5, 6), dn(4, 4, 5)
  spmm = lambda da, x: js.einsum("ij,jk->ik", A.with_data(da), x)
  sddmm = lambda da, u: js.einsum("ij,ik,jk->ij", A.with_data(da), u, v).data
  mul = lambda da, y: (A.with_data(da) * y).data
  cases = ((spmm, x, a @ x),
           (sddmm, u, _storage_data(a * (u @ v.T), fmt)),
           (mul, y, _storage_data(a * y, fmt)))
  for fun, dense, want in cases:
    einsum_kernel.last_decisions.clear()
    lowered = jax.jit(fun).lower(A.data, dense)
    decisions = [d for _, d in einsum_kernel.last_decisions]
    if js.config.lowering == "auto" and kernel_build.compiler() is not None:
      assert decisions == ["kernel"], decisions
    util.assert_allclose(lowered.compile()(A.data, dense), want, F64)
  util.check_grads_both(spmm, (A.data, x))
  util.check_grads_both(sddmm, (A.data, u))


@pytest.mark.parametrize("subscripts, partner", [
    ("ij,ij->", "csr"), ("ij,ij->ij", "coo"), ("ij,ji->i", "csc"), ("f,f->", "compressed"),
    ("f,f->f", "compressed")])
def test_all_dense_driver_with_a_sparse_partner(subscripts, partner, lowering):
  """A sparse partner of an all-dense-format driver is converted to the driver's dense
  levels: every coordinate stored, not its own capacity. (The converted partner once kept
  its capacity: the kernel read the shorter buffer by coordinate, past its end.)"""
  a_term, b_term = subscripts.split("->")[0].split(",")
  shape = (4, 5) if len(a_term) == 2 else (7,)
  A = js.from_dense(dn(0, *shape), js.Format(*[js.dense] * len(shape)))
  b_shape = tuple(shape[a_term.index(c)] for c in b_term)
  b_fmt = js.Format(js.compressed) if partner == "compressed" else partner
  B, b = sp(1, b_shape, b_fmt, density=0.3, padding=1)
  assert B.nse < np.prod(b_shape)

  def value(da, db):
    out = js.einsum(subscripts, A.with_data(da), B.with_data(db))
    return out.todense() if js.is_sparse(out) else out

  util.assert_allclose(jax.jit(value)(A.data, B.data),
                       np.einsum(subscripts, np.asarray(A.todense()), b), F64)
  util.check_grads_both(value, (A.data, B.data))


def test_joined_level_binding_a_block_index(lowering):
  """A joined sparse operand whose level binds an index of the driver's block dims: each
  coordinate it binds writes its own output element, once. (The kernel once also looped
  the block index, adding every product block-size times: ``A * B`` of a CSR-with-block
  ``A`` and a CSR ``B``, and the gradient of ``abc,c->`` w.r.t. a block operand.)"""
  A, a = sp(0, (4, 5), js.Format(js.compressed, js.dense), density=0.4, padding=2)
  assert A.layout.n_dense == 1
  B, b = sp(1, (4, 5), "csr", density=0.4, padding=1)
  C, c = sp(2, (3, 2, 4), "csr", n_dense=1, padding=1)
  v, vv = sp(3, (4,), js.Format(js.compressed), density=0.5, padding=1)
  cases = ((lambda da, db: (A.with_data(da) * B.with_data(db)).todense(), A, B, a * b),
           (lambda dc, dv: js.einsum("abc,c->", C.with_data(dc), v.with_data(dv)), C, v,
            np.einsum("abc,c->", c, vv)))
  for f, X, Y, want in cases:
    util.assert_allclose(jax.jit(f)(X.data, Y.data), want, F64)
    util.check_grads_both(f, (X.data, Y.data))


@pytest.mark.parametrize("subscripts", ["ij,ij->i", "ij,ji->", "ij,ij,jk->ik"])
def test_one_nonunique_array_twice(subscripts, lowering):
  """One non-unique array (its very index buffers) as two factors: entry ``k`` does not
  pair with entry ``k`` (that gives the sum of squared duplicates, not the square of their
  sum), so the operands are not co-iterated as one pattern. Values, jit, gradients."""
  A = js.from_coo(np.array([[0, 1], [2, 3], [0, 1], [1, 0], [2, 3], [3, 3]]), dn(0, 6),
                  (4, 4), format=util.UNORDERED_COO, nse=7)
  a, w = np.asarray(A.todense()), dn(1, 4, 3)

  def value(d):
    B = A.with_data(d)
    return js.einsum(subscripts, *(B, B, w)[:subscripts.count(",") + 1], out_format="dense")

  util.assert_allclose(jax.jit(value)(A.data), np.einsum(subscripts, a, a, w) if
                       subscripts.count(",") == 2 else np.einsum(subscripts, a, a), F64)
  util.check_grads_both(value, (A.data,))


# -- 3. out_format with dense operands only -------------------------------------------------
def test_out_format_of_dense_operands_is_honoured(lowering):
  once(lowering)
  x, y = dn(0, 4, 5), dn(1, 5, 3)
  y[:, 1] = 0                                   # a zero column: 8 nonzeros of 12
  want = x @ y
  C = js.einsum("ij,jk->ik", x, y, out_format="csr")
  assert C.format == js.CSR and C.nse == 8
  util.assert_allclose(C.todense(), want, F64)
  C = js.einsum("ij,jk->ik", x, y, out_format="coo", nse=10)      # padding
  assert C.format == js.COO and C.nse == 10
  util.assert_allclose(C.todense(), want, F64)
  f = jax.jit(lambda x, y: js.einsum("ij,jk->ik", x, y, out_format="csr", nse=9).todense())
  util.assert_allclose(f(x, y), want, F64)
  assert jax.eval_shape(f, x, y).shape == (4, 3)
  g = jax.jit(lambda x, y: js.einsum("ij,jk->ik", x, y, out_format=DD_T).data)
  util.assert_allclose(g(x, y), _storage_data(want, DD_T), F64)
  w = dn(2, 9)
  util.check_grads_both(
      lambda x: jnp.sum(js.einsum("ij,jk->ik", x, y, out_format="csr", nse=9).data * w),
      (jnp.asarray(x),))
  with pytest.raises(CapacityRequiredError, match="asks for a sparse result .* Pass nse="):
    jax.jit(lambda x, y: js.einsum("ij,jk->ik", x, y, out_format="csr"))(x, y)
  assert not js.is_sparse(js.einsum("ij,jk->ik", x, y, out_format="dense"))
  with pytest.raises(SparseCapacityError, match="capacity is nse=7"):
    js.einsum("ij,jk->ik", x, y, out_format="csr", nse=7)


def test_out_format_the_operands_cannot_give_is_honoured(lowering):
  """SpMM's rows are dense: CSR is stored from the dense result (nse under jit)."""
  once(lowering)
  A, a = sp(3, (4, 5), "csr")
  x = dn(4, 5, 3)
  want = a @ x
  C = js.einsum("ij,jk->ik", A, x, out_format="csr")
  assert C.format == js.CSR and C.shape == (4, 3)
  util.assert_allclose(C.todense(), want, F64)
  f = jax.jit(lambda d, x: js.einsum("ij,jk->ik", A.with_data(d), x, out_format="csr",
                                     nse=12).todense())
  util.assert_allclose(f(A.data, x), want, F64)
  with pytest.raises(CapacityRequiredError, match="asks for a sparse result .* Pass nse="):
    jax.jit(lambda x: js.einsum("ij,jk->ik", A, x, out_format="csr"))(x)


# -- 4. patterns with nse == 0 --------------------------------------------------------------
EMPTY = [pytest.param("csr", 0, id="csr"), pytest.param("coo", 0, id="coo"),
         pytest.param("csr", 1, id="csr_batched")]


@pytest.mark.parametrize("fmt, n_batch", EMPTY)
def test_products_with_an_empty_pattern(fmt, n_batch):
  batch = (2,) * n_batch
  A0 = js.from_dense(np.zeros(batch + (4, 5)), fmt, n_batch=n_batch)
  assert A0.nse == 0
  A, a = sp(0, batch + (4, 5), fmt, n_batch=n_batch)
  B, b = sp(1, batch + (5, 3), "csr", n_batch=n_batch)
  x, u, v = dn(1, *batch, 5, 3), dn(2, *batch, 4, 6), dn(3, *batch, 5, 6)
  y = dn(4, *batch, 4, 5)
  p = "b" * n_batch
  zeros = lambda *s: np.zeros(batch + s)
  cases = {
      "spmm": (lambda d: js.einsum(f"{p}ij,{p}jk->{p}ik", A0.with_data(d), x), zeros(4, 3)),
      "sddmm": (lambda d: js.einsum(f"{p}ij,{p}ik,{p}jk->{p}ij", A0.with_data(d), u, v),
                zeros(4, 5)),
      "mul_dense": (lambda d: A0.with_data(d) * y, zeros(4, 5)),
      "mul_sparse": (lambda d: A0.with_data(d) * A, zeros(4, 5)),
      "mul_sparse_rhs": (lambda d: A * A0.with_data(d), zeros(4, 5)),
      "matmul_sparse": (lambda d: js.einsum(f"{p}ij,{p}jk->{p}ik", A0.with_data(d), B),
                        zeros(4, 3)),
  }
  as_dense = lambda r: np.asarray(r.todense() if js.is_sparse(r) else r)
  for name, (fun, want) in cases.items():
    out = fun(A0.data)
    util.assert_allclose(as_dense(out), want, F64, err_msg=name)
    if name in ("sddmm", "mul_dense", "mul_sparse"):     # sampled at the empty pattern
      assert out.nse == 0, name
    grad = jax.grad(lambda d: jnp.sum(as_dense_jnp(fun(d))))(A0.data)
    assert grad.shape == A0.data.shape, name
  # Gradients w.r.t. the other operands are zero; jit and eval_shape work.
  loss = lambda A0, x, u, dB: (jnp.sum(js.einsum(f"{p}ij,{p}jk->{p}ik", A0, x))
                               + jnp.sum(js.einsum(f"{p}ij,{p}ik,{p}jk->{p}ij", A0, u, v).data)
                               + jnp.sum(js.einsum(f"{p}ij,{p}jk->{p}ik", A0, B.with_data(dB),
                                                   nse=0, work=0).data))
  g = jax.jit(jax.grad(loss, argnums=(1, 2, 3)))(A0, x, u, B.data)
  for got, like in zip(g, (x, u, B.data)):
    util.assert_allclose(got, np.zeros(np.shape(like)), F64)
  assert jax.eval_shape(loss, A0, x, u, B.data).shape == ()
  assert jax.jit(loss)(A0, x, u, B.data) == 0


def as_dense_jnp(r):
  return r.todense() if js.is_sparse(r) else r


def test_empty_product_under_vmap():
  A0 = js.from_dense(np.zeros((3, 4, 5)), "csr", n_batch=1)
  B, b = sp(1, (5, 3), "csr")
  f = jax.vmap(lambda A: js.einsum("ij,jk->ik", A, B, nse=0, work=0).todense())
  util.assert_allclose(jax.jit(f)(A0), np.zeros((3, 4, 3)), F64)
  x = dn(2, 5, 3)
  f = jax.vmap(lambda A, x: js.einsum("ij,jk->ik", A, x), in_axes=(0, None))
  util.assert_allclose(f(A0, x), np.zeros((3, 4, 3)), F64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_guarded_reductions_over_rows_of_every_length(dtype, lowering):
  """Diagonals, row and column sums and SpMV over rows holding 0 to 17 entries (past every
  SIMD width, with the diagonal inside): GCC 12 vectorised the float64 ``ii->i`` of a row
  of 8 entries to 0 before the kernels were built with -fno-tree-loop-if-convert."""
  n = 18
  rng = np.random.default_rng(71)
  m = np.zeros((n, n), dtype)
  for i in range(n):
    m[i, :i] = rng.standard_normal(i)
    m[i, i] = rng.standard_normal() if i % 3 else 0.0
  m[8, :8] = 1.0
  x = rng.standard_normal(n).astype(dtype)
  for fmt in ("csr", "csc", "coo"):
    A = js.from_dense(jnp.asarray(m), format=fmt, nse=int((m != 0).sum()) + 3)
    for sub, want in [("ii->i", np.diag(m)), ("ij->i", m.sum(1)), ("ij->j", m.sum(0))]:
      got = jax.jit(lambda A, sub=sub: js.einsum(sub, A))(A)
      np.testing.assert_allclose(np.asarray(got, F64), want, rtol=1e-5, atol=1e-5,
                                 err_msg=f"{fmt} {sub}")
    np.testing.assert_allclose(np.asarray(A @ x, F64), m.astype(F64) @ x, rtol=1e-5,
                               atol=1e-5, err_msg=fmt)
