"""primitives/row_reduce.py: segment max / sum broadcast back to the entries, and the softmax
built on them, through the generated kernel and the portable composition."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jscorch as js
from jscorch.primitives import row_reduce

import util

LOWERINGS = ["auto", "portable"]


@pytest.fixture(params=LOWERINGS)
def lowering(request):
  with util.use_lowering(request.param):
    yield request.param


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _random_pos(rng, rows, nse, lead=1, tail=2):
  """Non-decreasing boundaries in ``[lead, nse - tail]`` (padding before and after)."""
  cuts = np.sort(rng.integers(lead, nse - tail + 1, rows - 1))
  return np.concatenate([[lead], cuts, [nse - tail]]).astype(np.int32)


def _reference(pos, values, op):
  out = np.zeros(values.shape, np.float64)
  for r in range(len(pos) - 1):
    s, e = pos[r], pos[r + 1]
    if e > s:
      v = values[s:e].astype(np.float64)
      out[s:e] = v.max(0) if op == "max" else v.sum(0)
  return out


def _softmax_reference(pos, values):
  out = np.zeros(values.shape, np.float64)
  for r in range(len(pos) - 1):
    s, e = pos[r], pos[r + 1]
    if e > s:
      v = values[s:e].astype(np.float64)
      ex = np.exp(v - v.max(0))
      out[s:e] = ex / ex.sum(0)
  return out


@pytest.mark.parametrize("op", row_reduce.OPS)
@pytest.mark.parametrize("dtype, idx", [(np.float32, np.int32), (np.float64, np.int64)])
@pytest.mark.parametrize("block", [(), (3,), (2, 2)])
def test_matches_numpy(lowering, op, dtype, idx, block):
  rng = np.random.default_rng(hash((op, block)) % 2**32)
  pos = _random_pos(rng, 7, 40).astype(idx)
  values = rng.standard_normal((40,) + block).astype(dtype)
  got = jax.jit(lambda p, v: row_reduce.row_reduce(p, v, op))(pos, values)
  assert got.dtype == dtype and got.shape == values.shape
  np.testing.assert_allclose(got, _reference(pos, values, op), rtol=1e-6, atol=1e-6)
  sm = jax.jit(row_reduce.softmax)(pos, values)
  np.testing.assert_allclose(sm, _softmax_reference(pos, values), rtol=1e-6, atol=1e-7)


def test_kernel_is_used_on_cpu():
  pos, v = jnp.array([0, 2, 3], jnp.int32), jnp.ones(4, jnp.float32)
  text = jax.jit(lambda p, v: row_reduce.row_reduce(p, v, "sum")).lower(pos, v).as_text()
  assert "custom_call @jscorch_row_sum_int32_float" in text
  with util.use_lowering("portable"):
    text = jax.jit(lambda p, v: row_reduce.row_reduce(p, v, "sum")).lower(pos, v).as_text()
  assert "custom_call" not in text


def test_large_rows_run_on_threads_and_agree(lowering):
  """Enough entries to split the rows into chunks; power-law row lengths."""
  rng = np.random.default_rng(5)
  lengths = np.minimum(rng.zipf(1.5, 3000), 500)
  pos = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
  values = rng.standard_normal((int(pos[-1]) + 3, 4)).astype(np.float32)
  got = jax.jit(lambda p, v: row_reduce.row_reduce(p, v, "max"))(pos, values)
  np.testing.assert_array_equal(got, _reference(pos, values, "max").astype(np.float32))


def test_grad_jvp_vmap_eval_shape(lowering):
  rng = np.random.default_rng(2)
  pos = jnp.asarray(_random_pos(rng, 5, 16))
  v = jnp.asarray(rng.standard_normal((16, 2)))
  check_grads(lambda v: row_reduce.softmax(pos, v), (v,), order=2, modes=("fwd", "rev"))
  check_grads(lambda v: row_reduce.row_reduce(pos, v, "sum") ** 2, (v,), order=2,
              modes=("fwd", "rev"))
  # "max" is a constant shift: a zero tangent
  _, tangent = jax.jvp(lambda v: row_reduce.row_reduce(pos, v, "max"), (v,), (jnp.ones_like(v),))
  np.testing.assert_array_equal(tangent, 0)
  pos2 = jnp.stack([pos, jnp.asarray(_random_pos(rng, 5, 16))])
  v2 = jnp.stack([v, -v])
  got = jax.vmap(row_reduce.softmax)(pos2, v2)
  for b in range(2):
    np.testing.assert_allclose(got[b], _softmax_reference(np.asarray(pos2[b]), np.asarray(v2[b])),
                               rtol=1e-12, atol=1e-12)
  got = jax.vmap(lambda v: row_reduce.row_reduce(pos, v, "sum"), in_axes=1, out_axes=1)(v)
  np.testing.assert_allclose(got, _reference(np.asarray(pos), np.asarray(v), "sum"), rtol=1e-12)
  shape = jax.eval_shape(lambda p, v: row_reduce.row_reduce(p, v, "max"), pos2, v2)
  assert shape.shape == v2.shape and shape.dtype == v2.dtype


def test_out_of_range_pos_stays_in_bounds(lowering):
  """Boundaries that were never validated (negative, past nse, decreasing) are clamped:
  no read or write outside the buffers, entries outside every clamped range are 0."""
  values = jnp.arange(1.0, 7.0)
  for pos in ([-5, 2, 100], [4, 2, 3], [0, 9, 9, 9]):
    got = np.asarray(jax.jit(lambda p, v: row_reduce.row_reduce(p, v, "sum"))(
        jnp.asarray(pos, jnp.int32), values))
    assert got.shape == (6,) and np.all(np.isfinite(got))
  got = jax.jit(lambda p, v: row_reduce.row_reduce(p, v, "sum"))(
      jnp.asarray([-5, 2, 100], jnp.int32), values)
  np.testing.assert_array_equal(got, [3, 3, 18, 18, 18, 18])


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="op must be one of"):
    row_reduce.row_reduce(jnp.zeros(2, jnp.int32), jnp.zeros(1), "min")
  with pytest.raises(ValueError, match="share the batch shape"):
    row_reduce.row_reduce(jnp.zeros((2, 3), jnp.int32), jnp.zeros((3, 4)), "sum")


@pytest.mark.parametrize("fmt, uses", [("csr", True), ("coo", False)])
def test_sparse_softmax_takes_the_row_kernel_for_pos_segments(fmt, uses):
  """``js.softmax`` over CSR rows reduces by ``pos`` ranges; COO (no pos) keeps segment ids."""
  A = js.random(jax.random.key(0), (6, 7), density=0.4, format=fmt, dtype=jnp.float64)
  jaxpr = str(jax.make_jaxpr(lambda A: js.softmax(A, axis=1))(A))
  assert ("jscorch_row_reduce" in jaxpr) == uses
  dense = np.asarray(A.todense())
  want = np.where(dense != 0, np.exp(dense), 0)
  want = want / np.maximum(want.sum(1, keepdims=True), 1e-300)
  np.testing.assert_allclose(js.softmax(A, axis=1).todense(), want, rtol=1e-12)
