"""Zero-preserving elementwise functions (``jscorch.ops.unary``) on every kind of pattern.

A non-unique format may store one coordinate several times; the array holds their
sum, so a non-linear ``f`` must give ``f(a + b)``, never ``f(a) + f(b)``. Linear
functions map duplicates one by one and keep the index buffers (the same objects).
References are float64 numpy functions of the dense sum; every case has padding.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
import util
from jscorch.ops.unary import LINEAR_NAMES, ZERO_PRESERVING, valid_mask

NAMES = sorted(ZERO_PRESERVING)
NONLINEAR = [n for n in NAMES if n not in LINEAR_NAMES]
COO3_NONUNIQUE = js.Format(js.compressed(ordered=False, unique=False),
                           js.singleton(ordered=False, unique=False),
                           js.singleton(ordered=False, unique=False))


# -- float64 numpy references ---------------------------------------------------------------
def _gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805
_NN_REFERENCES = {
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(x)),
    "celu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "gelu": _gelu,
    "silu": lambda x: x / (1 + np.exp(-x)),
    "soft_sign": lambda x: x / (1 + np.abs(x)),
    "hard_tanh": lambda x: np.clip(x, -1, 1),
}


def reference(name: str):
  """The float64 numpy function of ``name`` (``numpy.<name>`` or the jax.nn formula)."""
  return _NN_REFERENCES[name] if name in _NN_REFERENCES else getattr(np, name)


assert set(NAMES) == {n for n in NAMES if n in _NN_REFERENCES or hasattr(np, n)}


def prepare(name: str):
  """The zero-preserving input transform that keeps ``name`` in its domain (applied to the
  stored values, so it also applies to each duplicate): sums of up to three duplicates
  stay below 1 in magnitude for ``arcsin`` / ``arctanh`` / ``log1p`` (and away from tan's
  poles), and positive for ``sqrt``."""
  if name in ("arcsin", "asin", "arctanh", "atanh", "log1p", "tan"):
    return "small"
  return "positive" if name == "sqrt" else "plain"


TRANSFORMS = {"plain": lambda v: v, "small": lambda v: 0.15 * v, "positive": abs}


# -- cases: (sparse array, float64 dense sum) ------------------------------------------------
CASES = {
    # id: (format, shape, n_batch, n_dense, duplicates)
    "coo_duplicates": (util.UNORDERED_COO, (4, 5), 0, 0, 3),
    "csr": (js.CSR, (4, 5), 0, 0, 0),
    "batched_coo_duplicates": (util.UNORDERED_COO, (2, 4, 5), 1, 0, 2),
    "coo_blocks_duplicates": (util.UNORDERED_COO, (4, 5, 3), 0, 1, 2),
    "csr_batched_blocks": (js.CSR, (2, 4, 5, 2), 1, 1, 0),
    "coo3_duplicates": (COO3_NONUNIQUE, (2, 3, 4), 0, 0, 2),
}
CASE_IDS = list(CASES)
PADDING = 2


@functools.lru_cache(maxsize=None)
def case(case_id: str, transform: str = "plain", dtype=np.float32):
  """``(A, x)``: a sparse array with padding (and duplicates where the case says so) and
  the float64 dense array it holds (duplicates summed with ``np.add.at``)."""
  fmt, shape, n_batch, n_dense, duplicates = CASES[case_id]
  seed = CASE_IDS.index(case_id)
  tf = TRANSFORMS[transform]
  if not duplicates:
    x = tf(util.random_dense(seed, shape, n_batch=n_batch, n_dense=n_dense, dtype=dtype))
    nse = util.stored_count(x, n_batch, n_dense) + PADDING
    A = util.jit_from_dense(x, format=fmt, nse=nse, n_batch=n_batch, n_dense=n_dense)
    return A, util.reference(x)
  n_sparse = len(shape) - n_batch - n_dense
  n = int(np.prod(shape[n_batch:n_batch + n_sparse])) // 2 + duplicates
  idx, values, _ = util.random_coo(seed, shape, n, n_batch=n_batch, n_dense=n_dense,
                                   duplicates=duplicates, dtype=dtype)
  values = tf(values)
  x = np.zeros(shape, np.float64)
  for b in np.ndindex(*shape[:n_batch]):
    np.add.at(x[b], tuple(idx[b].T), util.reference(values[b]))
  A = util.jit_from_coo(idx, values, shape=shape, format=fmt, nse=n + PADDING)
  assert not A.format.unique and A.nse > int(np.max(A.nnz)), "duplicates and padding"
  return A, x


def inputs(name: str, case_id: str):
  return case(case_id, prepare(name))


_valid = jax.jit(lambda B: jnp.broadcast_to(valid_mask(B), B.data.shape))


def assert_padding_zero(B):
  np.testing.assert_array_equal(np.asarray(B.data)[~np.asarray(_valid(B))], 0)


def test_cases_have_repeated_coordinates():
  """The duplicate cases do store some coordinate twice (else they test nothing)."""
  for case_id in CASE_IDS:
    A, x = case(case_id)
    if CASES[case_id][4]:
      assert int(np.min(A.nnz)) > util.stored_count(x, A.n_batch, A.n_dense), case_id


# -- values, every function ------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_values_eager(name):
  """``js.<name>(A)`` of a COO holding repeated coordinates equals numpy's function of the
  dense sum; capacity, batch and block dims kept, padding stays 0."""
  A, x = inputs(name, "coo_duplicates")
  B = getattr(js, name)(A)
  assert B.shape == A.shape and B.nse == A.nse and (B.n_batch, B.n_dense) == (
      A.n_batch, A.n_dense)
  util.assert_allclose(util.jit_todense(B), reference(name)(x).astype(np.float32), np.float32,
                       err_msg=name)
  assert_padding_zero(B)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_values_jit(case_id):
  """Under ``jit``, every case (one compilation each) with a deterministic third of the
  functions, so each function meets two of the six cases."""
  k = CASE_IDS.index(case_id)
  names = NAMES[k % 3::3]
  arrays = {t: case(case_id, t)[0] for t in TRANSFORMS}
  fns = jax.jit(lambda arrays: {n: getattr(js, n)(arrays[prepare(n)]) for n in names})
  out = fns(arrays)
  for n in names:
    A, x = inputs(n, case_id)
    B = out[n]
    assert B.shape == A.shape and B.nse == A.nse and (B.n_batch, B.n_dense) == (
        A.n_batch, A.n_dense), n
    util.assert_allclose(util.jit_todense(B), reference(n)(x).astype(np.float32),
                         np.float32, err_msg=f"{n} on {case_id} under jit")
    assert_padding_zero(B)


def test_power_and_operators_on_duplicates():
  """``A ** k``, ``A ** 0.5``, ``abs(A)`` and ``js.maximum(A, 0)`` sum duplicates first."""
  A, x = case("coo_duplicates")
  P, xp = case("coo_duplicates", "positive")
  util.assert_allclose((A ** 2).todense(), (x ** 2).astype(np.float32))
  util.assert_allclose((A ** 3).todense(), (x ** 3).astype(np.float32))
  util.assert_allclose(js.power(P, 0.5).todense(), np.sqrt(xp).astype(np.float32))
  util.assert_allclose(abs(A).todense(), np.abs(x).astype(np.float32))
  util.assert_allclose(js.maximum(A, 0).todense(), np.maximum(x, 0).astype(np.float32))
  util.assert_allclose(js.minimum(A, 0).todense(), np.minimum(x, 0).astype(np.float32))
  B = js.sin(A)
  assert B.format == js.COO and B.nse == A.nse     # the ordered, unique version of the format


# -- linear functions keep the pattern ----------------------------------------------------------
@pytest.mark.parametrize("case_id", ["coo_duplicates", "batched_coo_duplicates"])
def test_linear_functions_keep_index_buffers(case_id):
  A, x = case(case_id)
  results = [-A, +A, 2.5 * A, A / 4.0, A.real, A.conj()] + [
      getattr(js, n)(A) for n in sorted(LINEAR_NAMES)]
  for B in results:
    assert B.format == A.format and B.nse == A.nse
    assert all(b is a for a, b in zip(A.indices, B.indices, strict=True)), B
  util.assert_allclose((-A).todense(), -x.astype(np.float32))
  util.assert_allclose(js.deg2rad(A).todense(), np.deg2rad(x).astype(np.float32))


def test_nonlinear_functions_keep_unique_patterns():
  """A unique format proves there is nothing to sum: its buffers are kept too."""
  A, _ = case("csr")
  for n in ("sin", "abs", "square", "relu"):
    B = getattr(js, n)(A)
    assert B.format == A.format and all(b is a for a, b in zip(A.indices, B.indices))


def _index_vars_untouched(fun, A):
  """True when ``fun``'s jaxpr passes ``A``'s index buffers through without any op on them."""
  closed = jax.make_jaxpr(fun)(A)
  jaxpr = closed.jaxpr
  n_idx = len(A.indices)
  data_in, idx_in = jaxpr.invars[0], jaxpr.invars[1:1 + n_idx]
  used = {id(v) for eqn in jaxpr.eqns for v in eqn.invars}
  assert id(data_in) in used
  return not any(id(v) in used for v in idx_in) and [id(v) for v in jaxpr.outvars[1:]] == [
      id(v) for v in idx_in]


@pytest.mark.parametrize("case_id", ["coo_duplicates", "batched_coo_duplicates"])
def test_negation_under_jit_has_no_index_op(case_id):
  A, _ = case(case_id)
  assert _index_vars_untouched(lambda A: -A, A)
  assert _index_vars_untouched(js.negative, A)
  assert _index_vars_untouched(js.sparsify(lambda x: -x), A)
  assert _index_vars_untouched(js.sparsify(lambda x: 3.0 * x), A)
  assert not _index_vars_untouched(js.sin, A)        # the check can fail: sin coalesces


# -- transformations -------------------------------------------------------------------------------
def test_vmap_over_batched_duplicates():
  A, x = case("batched_coo_duplicates")
  out = jax.vmap(js.tanh)(A)
  util.assert_allclose(util.jit_todense(out), np.tanh(x).astype(np.float32))
  # in_axes=None for the array, a batched scale: the data is batched, the indices are not.
  A0 = util.element(A, 0)
  x0 = x[0]
  scales = jnp.array([1.0, -0.5, 2.0], jnp.float32)
  out = jax.vmap(lambda s, A: js.sin(A * s), in_axes=(0, None))(scales, A0)
  want = np.sin(np.asarray(scales, np.float64)[:, None, None] * x0)
  util.assert_allclose(util.jit_todense(out), want.astype(np.float32))


def test_eval_shape():
  A, _ = case("batched_coo_duplicates")
  for fn in (js.sin, js.negative, lambda A: A ** 3):
    out = jax.eval_shape(fn, A)
    assert out.shape == A.shape and out.nse == A.nse and out.dtype == A.dtype
    assert out.n_batch == A.n_batch


GRAD_CASES = [("sin", "plain"), ("sqrt", "positive"), ("power3", "plain")]


def test_grads():
  """Second-order gradients, forward and reverse, w.r.t. the stored values of a COO with
  repeated coordinates (float64); all functions in one, so one set of compilations."""
  with jax.enable_x64(True):
    arrays = [case("coo_duplicates", t, np.float64)[0] for _, t in GRAD_CASES]
    fns = [(lambda B: B ** 3) if n == "power3" else getattr(js, n) for n, _ in GRAD_CASES]

    def f(*datas):
      return tuple(fn(A.with_data(d)).todense() for fn, A, d in zip(fns, arrays, datas))

    datas = [A.data for A in arrays]
    util.check_grads_both(jax.jit(f), datas, atol=1e-6, rtol=1e-6)
    # The gradient at padding slots is zero, even for sqrt (infinite slope at 0).
    grads = jax.jit(jax.grad(lambda *d: sum(jnp.sum(y) for y in f(*d)),
                             argnums=tuple(range(len(datas)))))(*datas)
    for (n, _), A, g in zip(GRAD_CASES, arrays, grads):
      pad = np.arange(A.nse) >= np.asarray(A.nnz).reshape(A.layout.batch_shape + (1,))
      assert np.all(np.isfinite(np.asarray(g))), n
      assert pad.any()
      np.testing.assert_array_equal(np.asarray(g)[pad], 0, err_msg=n)
