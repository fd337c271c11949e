"""Shared test helpers: formats to parametrize over, random sparse arrays, references.

Every test module imports this one (``import util``); ``conftest.py`` puts
``tests/`` on ``sys.path``. The helpers build *fresh random nonzero* data with
padding (``nse`` larger than the number of stored entries) and compare results
against float64 / complex128 numpy references with one tolerance table.

Example:
  >>> import numpy as np, util
  >>> A, x = util.random_sparse(0, (4, 5), "csr", padding=2)
  >>> A.nse == int((x != 0).sum()) + 2
  True
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jscorch as js

# -- tolerances ----------------------------------------------------------------------------
_EXACT = dict(rtol=0, atol=0)
TOLERANCES: dict[np.dtype, dict[str, float]] = {
    np.dtype(jnp.bfloat16): dict(rtol=2e-2, atol=2e-2),
    np.dtype(np.float16): dict(rtol=2e-3, atol=2e-3),
    np.dtype(np.float32): dict(rtol=2e-6, atol=2e-6),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12),
    np.dtype(np.complex64): dict(rtol=2e-6, atol=2e-6),
    np.dtype(np.complex128): dict(rtol=1e-12, atol=1e-12),
    np.dtype(np.int8): _EXACT,
    np.dtype(np.int16): _EXACT,
    np.dtype(np.int32): _EXACT,
    np.dtype(np.int64): _EXACT,
    np.dtype(np.uint8): _EXACT,
    np.dtype(np.uint32): _EXACT,
    np.dtype(np.bool_): _EXACT,
}


def tolerance(dtype) -> dict[str, float]:
  """``dict(rtol=, atol=)`` for results of ``dtype`` (exact for integers and bools)."""
  return TOLERANCES[np.dtype(dtype)]


def reference(x) -> np.ndarray:
  """A float64 (complex128 for complex, int64 for integer) numpy copy of ``x``."""
  x = np.asarray(x)
  if np.issubdtype(x.dtype, np.complexfloating):
    return x.astype(np.complex128)
  if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
    return x.astype(np.int64)
  return x.astype(np.float64)


def assert_allclose(actual, expected, dtype=None, err_msg: str = "") -> None:
  """Asserts ``actual`` (a jax or numpy array) matches a float64 reference.

  Args:
    actual: the computed array.
    expected: the reference, ideally float64 / complex128 numpy.
    dtype: the dtype whose tolerance applies; default ``actual.dtype``. When given,
      ``actual`` must also have exactly this dtype.
    err_msg: extra text for the failure message.
  """
  actual_np = np.asarray(actual)
  if dtype is not None:
    assert actual_np.dtype == np.dtype(dtype), (actual_np.dtype, np.dtype(dtype), err_msg)
  else:
    dtype = actual_np.dtype
  expected = np.asarray(expected)
  assert actual_np.shape == expected.shape, (actual_np.shape, expected.shape, err_msg)
  np.testing.assert_allclose(reference(actual_np), reference(expected), err_msg=err_msg,
                             **tolerance(dtype))


def check_grads_both(f, args: Sequence[Any], **tol) -> None:
  """``jax.test_util.check_grads`` to second order, forward and reverse mode."""
  check_grads(f, tuple(args), order=2, modes=("fwd", "rev"), **tol)


def use_lowering(mode: str):
  """Sets ``jscorch.config.lowering`` to ``mode`` inside the block; always restored."""
  import jscorch as js
  return js.config.using(mode)


@contextlib.contextmanager
def count_lowerings():
  """Counts the XLA programs JAX lowers inside the block (each jitted function or eager
  operation met for the first time in the process): ``with count_lowerings() as n: ...``,
  then ``n[0]``. Use shapes no other test uses, or in-process caches hide lowerings."""
  count = [0]

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
      count[0] += 1
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield count
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


@contextlib.contextmanager
def dtype_context(dtype):
  """Enables ``jax_enable_x64`` inside the block when ``dtype`` is a 64-bit type.

  The suite runs in JAX's default 32-bit mode; a test of float64 / int64 /
  complex128 values does all its JAX work inside this context.
  """
  if np.dtype(dtype).itemsize >= 8 and np.dtype(dtype) != np.dtype(np.complex64):
    with jax.enable_x64(True):
      yield
  else:
    yield


# -- formats ---------------------------------------------------------------------------------
DCSC = js.Format(js.compressed, js.compressed, mode_ordering=(1, 0))
"""Doubly compressed, column-major: a custom (unnamed) 2-D format."""

UNORDERED_COO = js.Format(js.compressed(ordered=False, unique=False),
                          js.singleton(ordered=False, unique=False))
"""COO that promises neither order nor uniqueness (duplicates are kept)."""

COO3 = js.Format(js.compressed(unique=False), js.singleton(unique=False), js.singleton)
"""The 3-D COO format (what ``"coo"`` resolves to for three sparse dimensions)."""

DENSE_DCSR3 = js.Format(js.dense, js.compressed, js.compressed, mode_ordering=(2, 0, 1))
"""A custom 3-D format: dense outer level over the last dimension, then DCSR."""

FORMATS: list[tuple[str, js.Format]] = [
    ("csr", js.CSR),
    ("csc", js.CSC),
    ("coo", js.COO),
    ("dcsr", js.DCSR),
    ("dcsc", DCSC),
    ("coo_unordered_nonunique", UNORDERED_COO),
    ("csf3", js.CSF),
    ("coo3", COO3),
    ("dense_dcsr3", DENSE_DCSR3),
]
"""``(id, format)`` for every format the suite covers: named and custom, 2-D and 3-D."""

FORMATS_2D = [(i, f) for i, f in FORMATS if f.n_sparse == 2]
FORMATS_3D = [(i, f) for i, f in FORMATS if f.n_sparse == 3]

SPARSE_SHAPES = {1: (7,), 2: (4, 5), 3: (2, 3, 4)}
"""The default sparse shape for each number of sparse dimensions (no square shapes)."""
BATCH_SIZE = 2
BLOCK_SIZE = 3


def format_params(formats=None) -> list:
  """``pytest.param(format, id=id)`` for each of ``formats`` (default: all)."""
  return [pytest.param(f, id=i) for i, f in (FORMATS if formats is None else formats)]


def format_id(fmt) -> str:
  """The id of a format in :data:`FORMATS` (or its repr)."""
  for i, f in FORMATS:
    if f == fmt:
      return i
  return repr(fmt)


def default_shape(fmt: js.Format, n_batch: int = 0, n_dense: int = 0) -> tuple[int, ...]:
  """``(*batch, *sparse, *block)`` for ``fmt``'s sparse rank with small, distinct sizes."""
  return ((BATCH_SIZE,) * n_batch + SPARSE_SHAPES[fmt.n_sparse]
          + (BLOCK_SIZE,) * n_dense)


# -- random data -----------------------------------------------------------------------------
def _rng(rng) -> np.random.Generator:
  if isinstance(rng, np.random.Generator):
    return rng
  return np.random.default_rng(rng)


def random_values(rng, shape, dtype) -> np.ndarray:
  """Random values of ``dtype`` bounded away from zero (|v| in [0.5, 2), ints in [1, 10))."""
  rng = _rng(rng)
  dtype = np.dtype(dtype)
  if np.issubdtype(dtype, np.integer):
    sign = rng.choice([-1, 1], size=shape) if np.issubdtype(dtype, np.signedinteger) else 1
    return (rng.integers(1, 10, size=shape) * sign).astype(dtype)
  if dtype == np.bool_:
    return np.ones(shape, dtype)
  mag = rng.uniform(0.5, 2.0, size=shape)
  if np.issubdtype(dtype, np.complexfloating):
    phase = rng.uniform(0, 2 * np.pi, size=shape)
    return (mag * np.exp(1j * phase)).astype(dtype)
  return (mag * rng.choice([-1.0, 1.0], size=shape)).astype(dtype)


def random_dense(rng, shape, *, n_batch: int = 0, n_dense: int = 0, density: float = 0.5,
                 dtype=np.float32) -> np.ndarray:
  """A dense numpy array with ``density`` of its entries (blocks) nonzero, at random places.

  Every batch element gets exactly ``k = round(density * n)`` nonzero entries out
  of its ``n`` sparse coordinates, clipped to ``[1, n - 1]`` (so there is always a
  stored entry and always a zero); stored blocks have no zero element. A fixed
  count keeps capacities (and so compiled shapes) the same across seeds.
  """
  rng = _rng(rng)
  shape = tuple(shape)
  n_sparse = len(shape) - n_batch - n_dense
  batch, sparse = shape[:n_batch], shape[n_batch:n_batch + n_sparse]
  n = math.prod(sparse)
  k = min(max(int(round(density * n)), 1), max(n - 1, 1)) if n else 0
  mask = np.zeros(batch + (n,), bool)
  for b in np.ndindex(*batch):
    mask[b][rng.choice(n, size=k, replace=False)] = True
  mask = mask.reshape(batch + sparse)
  values = random_values(rng, shape, dtype)
  return np.where(mask.reshape(mask.shape + (1,) * n_dense), values, np.zeros((), dtype))


def stored_count(x, n_batch: int = 0, n_dense: int = 0) -> int:
  """Largest number of nonzero entries (blocks) of any batch element of ``x``."""
  mask = np.asarray(x) != 0
  if n_dense:
    mask = mask.any(axis=tuple(range(mask.ndim - n_dense, mask.ndim)))
  per = mask.reshape(mask.shape[:n_batch] + (-1,)).sum(-1)
  return int(np.max(per)) if per.size else 0


def random_sparse(rng, shape, format, *, n_batch: int = 0, n_dense: int = 0,
                  density: float = 0.5, padding: int = 2, dtype=np.float32):
  """A random sparse array with padding, and the dense numpy array it stores.

  Args:
    rng: an int seed or a ``np.random.Generator``.
    shape: the full shape ``(*batch, *sparse, *block)``.
    format: a format name or :class:`js.Format` (without batch / block dims).
    n_batch, n_dense: batch and block dimension counts.
    density: probability that an entry (block) is nonzero.
    padding: capacity beyond the largest stored count: ``nse = nnz + padding``.
    dtype: the value dtype (64-bit dtypes need :func:`dtype_context`).

  Returns:
    ``(A, x)``: ``A = js.from_dense(x, format, nse=nnz + padding, ...)`` and ``x``,
    the numpy array in ``dtype``.
  """
  dtype = np.dtype(dtype)
  if dtype.itemsize >= 8 and dtype != np.complex64 and not jax.config.jax_enable_x64:
    raise RuntimeError(f"random_sparse: dtype {dtype} needs `with util.dtype_context(dtype):`.")
  x = random_dense(rng, shape, n_batch=n_batch, n_dense=n_dense, density=density, dtype=dtype)
  nse = stored_count(x, n_batch, n_dense) + padding
  A = js.from_dense(x, format, nse=nse, n_batch=n_batch, n_dense=n_dense)
  return A, x


def random_coo(rng, shape, n: int, *, n_batch: int = 0, n_dense: int = 0, duplicates: int = 2,
               dtype=np.float32):
  """Random unsorted coordinates with ``duplicates`` repeated rows, and values.

  Returns:
    ``(indices, values, dense)``: ``indices`` `[*batch, n, n_sparse]` int32,
    ``values`` `[*batch, n, *block]`, and the float64 reference obtained with
    ``np.add.at`` (duplicates summed).
  """
  rng = _rng(rng)
  shape = tuple(shape)
  n_sparse = len(shape) - n_batch - n_dense
  batch, sparse, block = (shape[:n_batch], shape[n_batch:n_batch + n_sparse],
                          shape[n_batch + n_sparse:])
  idx = np.empty(batch + (n, n_sparse), np.int32)
  for b in np.ndindex(*batch):
    flat = rng.choice(math.prod(sparse), size=n - duplicates, replace=False)
    flat = np.concatenate([flat, rng.choice(flat, size=duplicates)])
    rng.shuffle(flat)
    idx[b] = np.stack(np.unravel_index(flat, sparse), -1)
  values = random_values(rng, batch + (n,) + block, dtype)
  dense = np.zeros(shape, reference(values).dtype)
  for b in np.ndindex(*batch):
    np.add.at(dense[b], tuple(idx[b].T), reference(values[b]))
  return idx, values, dense


# -- inspection ------------------------------------------------------------------------------
def buffers(A) -> list[np.ndarray]:
  """The index buffers of ``A`` as numpy arrays, in leaf order."""
  return [np.asarray(i) for i in A.indices]


def element(A, i: int):
  """Batch element ``i`` of a batched SparseArray (via the pytree, as ``vmap`` sees it)."""
  return jax.tree_util.tree_map(lambda leaf: leaf[i], A)


def assert_buffers_equal(A, indices: Sequence[Sequence[int]], data) -> None:
  """Asserts ``A``'s index buffers and values equal the literal expectations exactly."""
  got = buffers(A)
  assert len(got) == len(indices), (len(got), len(indices))
  for k, (g, e) in enumerate(zip(got, indices)):
    np.testing.assert_array_equal(g, np.asarray(e), err_msg=f"index buffer {k}")
    assert g.dtype == np.int32, (k, g.dtype)
  np.testing.assert_array_equal(np.asarray(A.data), np.asarray(data), err_msg="data")


def stored_coordinates(A) -> np.ndarray:
  """Logical coordinates of the in-use entries of an unbatched ``A`` (numpy reference).

  Decodes the level buffers independently of the library: walks ``pos`` / ``crd``.
  """
  lay = A.layout
  fmt = lay.format
  sizes = lay.level_sizes
  it = iter(buffers(A))
  rows = np.zeros((1, 0), np.int64)      # coordinates of the used positions of a level
  for k, lvl in enumerate(fmt.levels):
    if lvl.kind == "dense":
      rows = np.array([list(r) + [c] for r in rows for c in range(sizes[k])]).reshape(
          -1, k + 1)
    elif lvl.kind == "compressed":
      pos, crd = next(it), next(it)
      rows = np.array([list(rows[p]) + [int(crd[q])] for p in range(len(rows))
                       for q in range(pos[p], pos[p + 1])], np.int64).reshape(-1, k + 1)
    else:
      crd = next(it)
      rows = np.array([list(r) + [int(crd[q])] for q, r in enumerate(rows)],
                      np.int64).reshape(-1, k + 1)
  logical = np.empty_like(rows)
  logical[:, list(fmt.mode_ordering)] = rows
  return logical


def einsum_eqns(fun, *args):
  """``jscorch_einsum`` equations of ``fun``'s jaxpr, recursing into sub-jaxprs."""
  found = []

  def walk(jaxpr):
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "jscorch_einsum":
        found.append(eqn)
      for p in eqn.params.values():
        for sub in (p if isinstance(p, (list, tuple)) else [p]):
          if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
            walk(sub)

  walk(jax.make_jaxpr(fun)(*args))
  return found


# -- compiled helpers (one compile per layout instead of op-by-op dispatch) ---------------------
jit_todense = jax.jit(lambda A: A.todense())
jit_from_dense = jax.jit(js.from_dense, static_argnames=("format", "nse", "n_batch", "n_dense"))
jit_from_coo = jax.jit(js.from_coo, static_argnames=("shape", "format", "nse", "check"))


def random_sparse_jit(seed, shape, fmt, *, n_batch=0, n_dense=0, padding=2, density=0.5,
                      dtype=np.float64):
  """:func:`random_sparse` with a compiled ``from_dense`` (float64 by default)."""
  x = random_dense(seed, shape, n_batch=n_batch, n_dense=n_dense, density=density, dtype=dtype)
  nse = stored_count(x, n_batch, n_dense) + padding
  return jit_from_dense(x, format=fmt, nse=nse, n_batch=n_batch, n_dense=n_dense), x
