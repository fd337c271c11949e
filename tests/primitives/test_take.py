"""Tests of ``jscorch_take`` (values moved to their slots): the kernel and the portable
lowering against numpy for every element width, empty slots (past the end and negative),
block dimensions, ``vmap``, ``eval_shape`` and gradients of order 2."""
from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import util
from jax.test_util import check_grads

import jscorch as js
from jscorch.primitives import kernel_build
from jscorch.primitives.take import take

LOWERINGS = ["portable"] + (["kernel"] if kernel_build.compiler() else [])


def _reference(values, slots):
  n = values.shape[1]
  ok = (slots >= 0) & (slots < n)
  out = np.take_along_axis(values, np.where(ok, slots, 0).reshape(
      slots.shape + (1,) * (values.ndim - 2)), axis=1)
  return np.where(ok.reshape(ok.shape + (1,) * (values.ndim - 2)), out, 0)


def _case(rng, dtype, block=(), batch=2, n=7, m=9, idx=np.int32):
  values = rng.normal(size=(batch, n) + block) * 3
  if np.dtype(dtype).kind == "c":
    values = values + 1j * rng.normal(size=values.shape)
  values = values.astype(dtype) if np.dtype(dtype) != np.bool_ else values > 0
  slots = rng.integers(-2, n + 3, size=(batch, m)).astype(idx)    # empty slots both sides
  return values, slots


def _run(lowering, f, *args):
  with js.config.using("portable" if lowering == "portable" else "auto"), \
      util.dtype_context(args[0].dtype if args[0].dtype.itemsize == 8 else args[1].dtype):
    return np.asarray(jax.jit(f)(*args))


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("dtype,block,idx", [
    (np.float32, (), np.int32), (np.float32, (2, 3), np.int64), (np.bool_, (), np.int32),
    (np.int8, (3,), np.int64), (jnp.bfloat16, (), np.int32), (np.complex64, (2,), np.int32)])
def test_values_match_numpy(lowering, dtype, block, idx):
  rng = np.random.default_rng(zlib.crc32(f"{np.dtype(dtype)}{block}".encode()))
  values, slots = _case(rng, dtype, block, idx=idx)
  out = _run(lowering, take, values, slots)
  assert out.dtype == np.dtype(dtype) and out.shape == slots.shape + block
  np.testing.assert_array_equal(out, _reference(values, slots))


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_vmap_eval_shape_and_large_parallel_call(lowering):
  rng = np.random.default_rng(1)
  values, slots = _case(rng, np.float32, (2,))
  stacked = jax.vmap(take)(np.stack([values, -values]), np.stack([slots, slots[::-1]]))
  np.testing.assert_array_equal(np.asarray(stacked[1]), _reference(-values, slots[::-1]))
  shape = jax.eval_shape(take, values, slots)
  assert (shape.shape, shape.dtype) == ((2, 9, 2), np.float32)
  # enough bytes to run in chunks on the thread pool, chunks crossing batch elements
  big, big_slots = _case(rng, np.float32, (), batch=3, n=50_000, m=70_001)
  np.testing.assert_array_equal(_run(lowering, take, big, big_slots),
                                _reference(big, big_slots))
  with js.config.using("portable" if lowering == "portable" else "auto"):
    text = jax.jit(take).lower(big, big_slots).as_text()
  assert ("jscorch_take_i32_u32x1" in text) == (lowering == "kernel")


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_no_entries_gives_empty_slots(lowering):
  """Slots into a buffer of no entries (e.g. a conversion of an array with capacity 0 to
  one with room to spare) are all empty, in both lowerings and their gradient."""
  values = np.zeros((2, 0, 3), np.float32)
  slots = np.array([[0, 1], [-1, 5]], np.int32)
  out = _run(lowering, take, values, slots)
  np.testing.assert_array_equal(out, np.zeros((2, 2, 3), np.float32))
  with js.config.using("portable" if lowering == "portable" else "auto"):
    grad = jax.grad(lambda v: jnp.sum(take(v, slots) ** 2))(values)
  assert grad.shape == values.shape


def test_missing_compiler_warns_once_and_gathers(monkeypatch):
  values, slots = _case(np.random.default_rng(3), np.float32, (2,))
  monkeypatch.setattr(kernel_build, "compiler", lambda: None)
  monkeypatch.setattr(kernel_build, "_warned", [False])
  with pytest.warns(js.primitives.SparseEfficiencyWarning, match="no C compiler found"):
    text = jax.jit(take).lower(values, slots).as_text()
  assert "custom_call" not in text
  np.testing.assert_array_equal(_run("portable", take, values, slots), _reference(values, slots))


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_gradients_of_order_two(lowering):
  values, slots = _case(np.random.default_rng(2), np.float64, (3,))
  slots[0, :3] = 4                                  # one entry in several slots
  with js.config.using("portable" if lowering == "portable" else "auto"), \
      util.dtype_context(np.float64):
    check_grads(lambda v: jnp.sin(take(v, slots)), (values,), order=2, modes=("fwd", "rev"))


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match=r"^take: values \[B, n, \*block\] and slots \[B, m\] "
                                       r"must share B; got values \(2, 3\), slots \(3, 4\)\.$"):
    take(jnp.ones((2, 3)), jnp.zeros((3, 4), jnp.int32))
  with pytest.raises(ValueError, match=r"^take: slots must be int32 or int64; got float32\.$"):
    take(jnp.ones((2, 3)), jnp.zeros((2, 4), jnp.float32))
