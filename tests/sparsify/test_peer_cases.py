"""js.sparsify on the cases the peers' suites check (issue 15): reductions that feed a
division (row normalisation), ``jnp.vstack`` of mixed ranks, sparse loop carries,
``rev`` / ``stack`` / ``conv_general_dilated`` rules and empty slice windows.

Values against float64 numpy references (padding present), eager and under
``jit``; gradients with ``check_grads`` (order 2, forward and reverse, float64)
w.r.t. the stored values; ``vmap`` against a loop where it applies.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
import util
from jscorch.sparsify import SparsifyError, sparsify

TOL = dict(rtol=2e-5, atol=2e-5)


def close(out, ref, **tol):
  out = out.todense() if js.is_sparse(out) else out
  np.testing.assert_allclose(np.asarray(out, np.float64), np.asarray(ref, np.float64),
                             **(tol or TOL))


def run(fn, args, kind, *, eager=False, ref=None, **kw):
  """``sparsify(fn)`` under jit (and eagerly) vs ``fn`` on float64 numpy operands.

  ``fn`` may return a tuple; ``kind`` is then a string of ``"s"`` (sparse) / ``"d"``.
  """
  if ref is None:
    ref = fn(*[np.asarray(a.todense() if js.is_sparse(a) else a, np.float64) for a in args])
  f = sparsify(fn, **kw)
  for g in ([jax.jit(f), f] if eager else [jax.jit(f)]):
    out = g(*args)
    outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
    for o, r, k in zip(outs, refs, kind):
      assert js.is_sparse(o) == (k == "s"), (o, kind)
      close(o, r)
  return out


# -- reductions over a sparse dim are dense; dividing by them keeps A's pattern ---------------
# (id, format, n_batch, n_dense)
LAYOUTS = [("csr", "csr", 0, 0), ("coo", "coo", 0, 0), ("dcsc", util.DCSC, 0, 0),
           ("csr-batch", "csr", 1, 0), ("coo-block", "coo", 0, 1), ("coo3", "coo", 0, 0)]


def _layout(name, seed=0):
  _, fmt, nb, nd = next(x for x in LAYOUTS if x[0] == name)
  sparse = (3, 4, 5) if name == "coo3" else (5, 6)
  shape = (2,) * nb + sparse + (3,) * nd
  return util.random_sparse(seed, shape, fmt, n_batch=nb, n_dense=nd, padding=2)


def _np_norm(x, axis, keepdims=False):
  return np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims))


def _normalised(x, norm):
  return np.where(x != 0, x / np.where(norm == 0, 1, norm), 0)


@pytest.mark.parametrize("name", [x[0] for x in LAYOUTS])
def test_reductions_are_dense_and_normalisation_keeps_the_pattern(name):
  """``A / norm(A, axis)`` (JAX issue #23237): A's pattern, 0 where A stores nothing."""
  A, x = _layout(name)
  x = x.astype(np.float64)
  ax = A.ndim - 2
  sl = (slice(None),) * (A.ndim - 1) + (None,)
  fn = lambda A: (jnp.sum(A * A, axis=-1, keepdims=True),
                  jnp.linalg.norm(A, axis=ax, keepdims=True),
                  A / jnp.linalg.norm(A, axis=-1, keepdims=True),
                  A / jnp.linalg.norm(A, axis=ax, keepdims=True),
                  A / jnp.linalg.norm(A, axis=-1)[sl])
  ref = (np.sum(x * x, axis=-1, keepdims=True), _np_norm(x, ax, keepdims=True),
         _normalised(x, _np_norm(x, -1, True)), _normalised(x, _np_norm(x, ax, True)),
         _normalised(x, _np_norm(x, -1, True)))
  out = run(fn, (A,), "ddsss", ref=ref, eager=name in ("coo", "csr-batch"))
  for o in out[2:]:
    assert o.format == A.format and o.nse == A.nse


def test_row_normalisation_grad_and_vmap():
  f = lambda A: A / jnp.linalg.norm(A, axis=-1)[:, None]
  with jax.enable_x64(True):
    A, _ = util.random_sparse_jit(1, (5, 6), "coo")
    h = sparsify(lambda A: (f(A), jnp.sum(A * A, axis=-1, keepdims=True)))
    g = jax.jit(lambda d: (lambda o: (o[0].data, o[1]))(h(A.with_data(d))))
    util.check_grads_both(g, (A.data,))
  Ab, xb = util.random_sparse(2, (3, 5, 6), "csr", n_batch=1, padding=2)
  out = jax.jit(jax.vmap(sparsify(f)))(Ab)
  for i in range(3):
    xi = xb[i].astype(np.float64)
    close(util.element(out, i), xi / _np_norm(xi, -1, keepdims=True))


def test_matvec_chains_of_one_pattern_are_dense():
  A, x = util.random_sparse(3, (6, 6), "coo", padding=2)
  y = jnp.asarray(util.random_values(4, (6,), np.float32))
  run(lambda A, y: (A.T @ (A @ y), jnp.linalg.norm(A @ y)), (A, y), "dd")


# -- vstack / concatenate of mixed batch / block splits -----------------------------------------
def test_vstack_of_1d_and_2d_sparse():
  v, y = util.random_sparse(5, (6,), "coo", padding=1)
  A, x = util.random_sparse(6, (4, 6), "csr", padding=2)
  out = run(lambda v, A: (jnp.vstack([v, A, v]), jnp.vstack([A, v])), (v, A), "ss", eager=True)
  assert out[0].shape == (6, 6) and out[0].n_batch == 0
  with jax.enable_x64(True):
    v64, _ = util.random_sparse_jit(5, (6,), "coo")
    A64, _ = util.random_sparse_jit(6, (4, 6), "csr")
    h = sparsify(lambda v, A: jnp.vstack([v, A]))
    g = jax.jit(lambda a, b: h(v64.with_data(a), A64.with_data(b)).todense())
    util.check_grads_both(g, (v64.data, A64.data))


@pytest.mark.parametrize("nb,nd", [(1, 1)])
def test_concatenate_reconciles_batch_and_block_splits(nb, nd):
  shape = (2, 4, 5, 3)
  A, x = util.random_sparse(7, shape, "csr" if nb + nd == 2 else "coo", n_batch=nb, n_dense=nd)
  B, y = util.random_sparse(8, shape, "coo", density=0.3)
  out = jax.jit(lambda A, B: [js.concatenate([A, B], axis=k) for k in range(4)]
                + [js.concatenate([B, A], axis=1)])(A, B)
  for k in range(4):
    assert (out[k].n_batch, out[k].n_dense) == (0, 0)
    close(out[k], np.concatenate([x, y], axis=k))
  close(out[4], np.concatenate([y, x], axis=1))


def test_common_split_keeps_values_and_moves_dims():
  from jscorch.ops.shape import common_split
  A, x = util.random_sparse(9, (2, 3, 4, 2), "csr", n_batch=1, n_dense=1, padding=1)
  B, y = util.random_sparse(10, (2, 3, 4, 2), "coo", n_batch=0, n_dense=1, padding=1)
  A2, B2 = jax.jit(common_split)([A, B])
  assert (A2.n_batch, A2.n_dense, B2.n_batch, B2.n_dense) == (0, 1, 0, 1)
  assert A2.nse == 2 * A.nse and B2.layout == B.layout
  close(A2, x), close(B2, y)


# -- sparse loop carries ------------------------------------------------------------------------
def test_fori_and_while_carry_a_fixed_pattern():
  A, x = util.random_sparse(10, (5, 6), "coo", padding=2)
  halve = lambda A: jax.lax.while_loop(lambda c: jnp.sum(jnp.abs(c[1])) > 0.5,
                                       lambda c: (c[0] + 1, c[1] * 0.5), (0, A))
  fn = lambda A, k: (jax.lax.fori_loop(0, 3, lambda i, B: jax.nn.relu(B) * 0.5 - B, A),
                     *halve(A),
                     jax.lax.fori_loop(0, k, lambda i, B: B * 0.5, A),       # a while loop
                     jax.lax.fori_loop(0, 2, lambda i, B: B.T.T * 2.0, A.T))  # converted
  n_ref = halve(jnp.asarray(x))[0]
  xr = lambda B: jax.lax.fori_loop(0, 3, lambda i, B: jax.nn.relu(B) * 0.5 - B, B)
  ref = (xr(jnp.asarray(x)), n_ref, x / 2.0 ** int(n_ref), x / 8, 4 * x.T)
  out = run(fn, (A, jnp.int32(3)), "sdsss", ref=ref, eager=True)
  assert int(n_ref) > 0
  for o, like in zip(out[::2], (A, A, A.T)):
    assert o.format == like.format and o.nse == like.nse


def test_sparse_initial_vector_of_a_dense_loop_is_carried_dense():
  A, _ = util.random_sparse(12, (6, 6), "coo", padding=2)
  v, _ = util.random_sparse(13, (6,), "coo", padding=1)
  run(lambda A, v: jax.lax.fori_loop(0, 4, lambda i, y: jnp.tanh(A @ y), v), (A, v), "d")


def test_scan_carry_xs_and_ys_sparse():
  A, x = util.random_sparse(14, (5, 6), "csr", padding=2)
  Ab, xb = util.random_sparse(15, (3, 5, 6), "coo", n_batch=1, padding=2)
  f = lambda A, Ab: jax.lax.scan(lambda c, a: (c * 0.5, (jnp.sum(a * c), 2.0 * a)), A, Ab)
  c, (s, ys) = jax.jit(sparsify(f))(A, Ab)
  rc, (rs, rys) = f(jnp.asarray(x), jnp.asarray(xb))
  assert js.is_sparse(c) and js.is_sparse(ys) and ys.n_batch == 1
  close(c, rc), close(s, rs), close(ys, rys)


def test_loop_carry_grad_and_vmap():
  f = lambda A: jax.lax.fori_loop(0, 3, lambda i, B: jnp.sin(B) * 0.5, A)
  with jax.enable_x64(True):
    A, _ = util.random_sparse_jit(16, (4, 5), "coo")
    g = jax.jit(lambda d: sparsify(f)(A.with_data(d)).data)
    util.check_grads_both(g, (A.data,))
  Ab, xb = util.random_sparse(17, (3, 4, 5), "csr", n_batch=1, padding=2)
  out = jax.jit(jax.vmap(sparsify(f)))(Ab)
  for i in range(3):
    close(util.element(out, i), f(jnp.asarray(xb[i])))


def test_growing_loop_carry_is_refused_or_densified():
  A, x = util.random_sparse(18, (5, 6), "coo", padding=2)
  B, y = util.random_sparse(19, (5, 6), "csr", padding=2)
  f = lambda A, B: jax.lax.fori_loop(0, 2, lambda i, C: C + B, A)
  with pytest.raises(SparsifyError, match=r"sparsify: primitive 'scan' at .*test_peer_cases.py"
                     r".* changes loop carry 1 from SparseArray\(float32\[5, 6\], format=COO, "
                     r"nse=\d+\) into .*its pattern cannot grow inside the loop; .*"
                     r"densify=True.*todense\(\)"):
    sparsify(f)(A, B)
  with pytest.warns(js.SparseEfficiencyWarning, match=r"'scan'.*changes loop carry 1"):
    out = jax.jit(sparsify(f, densify=True))(A, B)
  close(out, x + 2 * y)
  # a product with a new pattern in a loop body says it is in a loop body
  with pytest.raises(SparsifyError, match="data-dependent number of entries") as info:
    sparsify(lambda A: jax.lax.fori_loop(0, 2, lambda i, C: C @ C, A))(
        util.random_sparse(20, (5, 5), "coo")[0])
  assert any("in the body of the loop 'scan'" in n for n in info.value.__notes__)


# -- rev, stack, conv ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["coo-block", "csr-batch"])
def test_rev(name):
  A, x = _layout(name)
  run(lambda A: (jnp.flip(A), A[::-1, ..., ::-1], jnp.flip(A, A.ndim - 2)), (A,), "sss",
      eager=name == "csr-batch")
  if name == "csr-batch":
    with jax.enable_x64(True):
      A64, _ = util.random_sparse_jit(21, A.shape, "csr", n_batch=1)
      g = jax.jit(lambda d: sparsify(lambda A: jnp.flip(A) * 2.0)(A64.with_data(d)).todense())
      util.check_grads_both(g, (A64.data,))


def test_stack_primitive():
  A, x = util.random_sparse(22, (4, 5), "csr", padding=2)
  B, y = util.random_sparse(23, (4, 5), "coo", padding=1)
  out = run(lambda A, B: tuple(jnp.stack([A, B], axis=k) for k in range(3)), (A, B), "sss")
  assert out[0].n_batch == 1 and out[1].n_batch == 0
  with pytest.raises(SparsifyError, match=r"'stack' at .*stacks sparse and dense operands"):
    sparsify(lambda A, y: jnp.stack([A, y]))(A, jnp.asarray(y))
  with pytest.warns(js.SparseEfficiencyWarning, match="'stack'"):
    close(sparsify(lambda A, y: jnp.stack([A, y]), densify=True)(A, jnp.asarray(y)),
          np.stack([x, y]))


CONV_CASES = [  # (id, lhs shape, rhs shape, kwargs)
    ("1d-stride-dil", (2, 3, 9), (4, 3, 3),
     dict(window_strides=(2,), padding=((2, -1),), lhs_dilation=(2,), rhs_dilation=(2,))),
    ("2d-nhwc-groups", (2, 6, 7, 4), (3, 3, 2, 6),
     dict(window_strides=(1, 2), padding="SAME", feature_group_count=2,
          dimension_numbers=("NHWC", "HWIO", "NHWC"))),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in CONV_CASES])
def test_conv_with_a_sparse_input_or_kernel(case):
  _, ls, rs, kw = case
  conv = lambda a, w: jax.lax.conv_general_dilated(a, w, **kw)
  A, x = util.random_sparse(24, ls, "coo", padding=2, density=0.3)
  W, w = util.random_sparse(25, rs, "coo", padding=2, density=0.4)
  both = lambda A, w, x, W: (conv(A, w), conv(x, W))
  run(both, (A, jnp.asarray(w), jnp.asarray(x), W), "dd")
  if case[0] == "1d-stride-dil":
    with jax.enable_x64(True):
      A64, _ = util.random_sparse_jit(24, ls, "coo", density=0.3)
      W64, w64 = util.random_sparse_jit(25, rs, "coo", density=0.4)
      g = jax.jit(sparsify(conv))
      util.check_grads_both(lambda d, w: g(A64.with_data(d), w), (A64.data, jnp.asarray(w64)))
      util.check_grads_both(lambda d: g(A64.todense(), W64.with_data(d)), (W64.data,))


def test_convolve_and_conv_errors():
  v, y = util.random_sparse(26, (9,), "coo", padding=1)
  k = jnp.asarray([1.0, -2.0, 0.5])
  run(lambda v, k: (jnp.convolve(v, k), jnp.convolve(v, k, mode="same")), (v, k), "dd")
  A, x = util.random_sparse(27, (4, 2, 6), "coo", padding=2)
  bgc = lambda a, w: jax.lax.conv_general_dilated(a, w, (1,), "VALID", batch_group_count=2)
  w = jnp.ones((4, 2, 3))
  with pytest.raises(SparsifyError, match=r"'conv_general_dilated' at .*batch_group_count > 1"):
    sparsify(bgc)(A, w)
  with pytest.warns(js.SparseEfficiencyWarning, match="conv_general_dilated"):
    close(sparsify(bgc, densify=True)(A, w), bgc(jnp.asarray(x), w), rtol=1e-4, atol=1e-4)
  with pytest.raises(SparsifyError, match=r"convolves two sparse operands"):
    sparsify(lambda a, w: jax.lax.conv(a, w, (1,), "VALID"))(A, js.from_dense(w, "coo"))


# -- empty slice windows ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["coo", "csr-batch", "coo-block"])
def test_empty_slice_windows(name):
  """Windows of size 0 along batch, sparse and block dims route to ``jscorch.ops.index``."""
  A, x = _layout(name)
  sls = [(slice(None),) * d + (slice(2, 2),) for d in range(A.ndim)]
  fn = lambda A: tuple(f for d, sl in enumerate(sls) for f in (
      A[sl], jax.lax.slice_in_dim(A, 1, 1, axis=d), jax.lax.dynamic_slice_in_dim(A, 1, 0, d)))
  ref = tuple(np.asarray(x)[sl] for sl in sls for _ in range(3))
  out = run(fn, (A,), "s" * len(ref), ref=ref, eager=name == "coo")
  for o, r, sl in zip(out[::3], ref[::3], sls):
    assert o.shape == r.shape and o.layout == A[sl].layout
  # derivatives through empty windows
  g = lambda d_: [o.todense() for o in sparsify(fn)(A.with_data(d_))]
  for jacobian in (jax.jacfwd, jax.jacrev):
    for jac, r in zip(jacobian(g)(A.data), ref):
      assert jac.shape == r.shape + A.data.shape and jac.size == 0
