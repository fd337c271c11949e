"""Blocked formats (BSR): the format, construction, conversions and scipy interop.

Every array is drawn fresh with some all-zero blocks and stored with padding (capacity
above the blocks in use); values are compared with float64 numpy and scipy.sparse.bsr_array.
"""
from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import jscorch as js
from jscorch.primitives import SparseCapacityError, SparseFormatError
from jscorch.primitives.formats import Dim, FloorDiv, Mod, resolve_format


def blocky(seed, shape=(6, 8), block=(2, 4), density=0.5, batch=()):
  """A float32 array of ``shape`` whose blocks are all-zero with probability 1 - density
  (at least one zero and one nonzero block), with zeros inside the nonzero blocks too."""
  rng = np.random.default_rng(seed)
  grid = (shape[0] // block[0], shape[1] // block[1])
  keep = rng.random(batch + grid) < density
  keep.reshape((-1,) + grid)[:, 0, 0] = True
  keep.reshape((-1,) + grid)[:, -1, -1] = False
  mask = np.kron(keep, np.ones(block)) * (rng.random(batch + shape) < 0.8)
  return (rng.standard_normal(batch + shape) * mask).astype(np.float32)


def n_blocks(x, block):
  g = x.reshape(x.shape[:-2] + (x.shape[-2] // block[0], block[0], x.shape[-1] // block[1],
                                block[1]))
  return int((g != 0).any(axis=(-3, -1)).reshape((-1,) + g.shape[-4:-3] + g.shape[-2:-1])
             .sum(axis=(-2, -1)).max())


# -- the format ------------------------------------------------------------------------------
def test_bsr_format():
  f = js.BSR((2, 3))
  assert f.dim_to_lvl == (FloorDiv(0, 2), FloorDiv(1, 3), Mod(0, 2), Mod(1, 3))
  assert f.blocks == (2, 3) and f.ndim == 2 and f.name is None
  assert f.storage == js.CSR.replace(n_dense=2) and f.base == js.CSR
  assert f.spelled_levels == (js.dense, js.compressed, js.dense, js.dense)
  assert repr(f) == "BSR((2, 3))"
  assert repr(js.blocked(js.CSC, (2, 3))) == "blocked(CSC, (2, 3))"
  assert js.blocked(js.CSC, (2, 3)).dim_to_lvl == (Dim(1) // 3, Dim(0) // 2, Dim(0) % 2,
                                                  Dim(1) % 3)
  spelled = js.Format(js.dense, js.compressed, js.dense, js.dense,
                      dim_to_lvl=(Dim(0) // 2, Dim(1) // 3, Dim(0) % 2, Dim(1) % 3))
  assert spelled == f and hash(spelled) == hash(f)
  assert js.blocked("csr", (2, 3)) == f != js.BSR((3, 2))
  assert pickle.loads(pickle.dumps(f)) == f
  assert resolve_format(f, 3, n_batch=1) == f.replace(n_batch=1)
  assert repr(f.replace(n_batch=1)) == "blocked(Format(dense, compressed, n_batch=1), (2, 3))"


@pytest.mark.parametrize("make, match", [
    (lambda: js.BSR(2), r"BSR: block must be a \(bm, bn\) tuple of ints >= 1; got block=2"),
    (lambda: js.BSR((2, 2, 2)), r"BSR: block must be a \(bm, bn\) tuple .*got block=\(2, 2, 2\)"),
    (lambda: js.blocked(js.CSR, (0, 2)), r"blocked: block must be a tuple of ints >= 1"),
    (lambda: js.blocked(js.CSR, (2,)), r"blocked: the base must be an unblocked format with 1"),
    (lambda: js.blocked(js.BSR((2, 2)), (2, 2)), r"blocked: the base must be an unblocked"),
    (lambda: js.Format(js.dense, js.compressed, js.dense, js.dense,
                       dim_to_lvl=(Dim(0) // 2, Dim(1) // 3, Dim(1) % 3, Dim(0) % 2)),
     r"Format: a blocked dim_to_lvl must be one FloorDiv per sparse dimension"),
    (lambda: js.Format(js.dense, js.compressed, js.compressed, js.dense,
                       dim_to_lvl=(Dim(0) // 2, Dim(1) // 3, Dim(0) % 2, Dim(1) % 3)),
     r"Format: a blocked dim_to_lvl needs 4 levels, the last 2 dense"),
], ids=["int", "rank3", "zero", "rank", "twice", "mod-order", "sparse-mod"])
def test_format_errors(make, match):
  with pytest.raises(SparseFormatError, match=match):
    make()


# -- construction -----------------------------------------------------------------------------
def test_from_dense_todense_buffers():
  x = np.zeros((4, 6), np.float32)
  x[0, 1], x[3, 5], x[3, 0] = 1., 2., 3.
  A = js.from_dense(x, format=js.BSR((2, 3)), nse=4)
  assert A.shape == (4, 6) and A.format == js.BSR((2, 3)) and A.nse == 4 and A.n_dense == 0
  assert repr(A) == "SparseArray(float32[4, 6], format=BSR((2, 3)), nse=4)"
  np.testing.assert_array_equal(A.pos(1), [0, 1, 3])
  np.testing.assert_array_equal(A.crd(1), [0, 0, 1, 2])               # 2: padding
  assert A.data.shape == (4, 2, 3) and int(A.nnz) == 3
  np.testing.assert_array_equal(A.data[1], [[0, 0, 0], [3, 0, 0]])
  np.testing.assert_array_equal(A.data[3], 0)                          # padding
  np.testing.assert_array_equal(A.todense(), x)
  V = A.block_view()
  assert V.shape == (2, 2, 2, 3) and V.format == js.CSR.replace(n_dense=2)


@pytest.mark.parametrize("block", [(2, 4), (3, 2), (1, 8)], ids=str)
def test_round_trip_random(block):
  x = blocky(0, (6, 8), block)
  A = js.from_dense(x, format=js.BSR(block))
  assert A.nse == n_blocks(x, block)
  np.testing.assert_array_equal(A.todense(), x)
  P = js.from_dense(x, format=js.BSR(block), nse=A.nse + 2)          # padding
  np.testing.assert_array_equal(P.todense(), x)
  np.testing.assert_array_equal(P.to_scipy().toarray(), x)


def test_from_dense_jit_vmap_eval_shape():
  x = blocky(1, batch=(3,))
  f = jax.jit(lambda x: js.from_dense(x, format=js.BSR((2, 4)), nse=5, n_batch=1))
  A = f(x)
  assert A.shape == (3, 6, 8) and A.n_batch == 1 and A.nse == 5
  np.testing.assert_array_equal(A.todense(), x)
  np.testing.assert_array_equal(jax.vmap(lambda A: A.todense())(A), x)
  s = jax.eval_shape(f, x)
  assert s.shape == (3, 6, 8) and s.data.shape == (3, 5, 2, 4) and s.format == A.format
  with pytest.raises(SparseCapacityError, match="from_dense: the result needs"):
    js.from_dense(x[0], format=js.BSR((2, 4)), nse=1)
  with pytest.raises(TypeError, match="from_dense: nse must be given under jit"):
    jax.jit(lambda x: js.from_dense(x, format=js.BSR((2, 4))))(x[0])


def test_not_divisible():
  with pytest.raises(SparseFormatError,
                     match=r"from_dense: x has shape \(5, 8\), whose sparse dimensions \(5, 8\) "
                     r"are not multiples of the block \(2, 4\) of format BSR\(\(2, 4\)\); "
                     r"expected each to divide evenly. Pad x with zeros to shape \(6, 8\)"):
    js.from_dense(np.ones((5, 8)), format=js.BSR((2, 4)))
  A = js.from_dense(np.ones((6, 6)))
  with pytest.raises(SparseFormatError, match=r"SparseArray.asformat: A has shape \(6, 6\).*"
                     r"Pad A with zeros to shape \(6, 8\)"):
    A.asformat(js.BSR((3, 4)))


def test_from_buffers():
  A = js.SparseArray.from_buffers(jnp.ones((2, 2, 3)), [jnp.array([0, 1, 2]),
                                                        jnp.array([1, 0])],
                                  shape=(4, 6), format=js.BSR((2, 3)))
  expected = np.zeros((4, 6))
  expected[0:2, 3:6] = 1
  expected[2:4, 0:3] = 1
  np.testing.assert_array_equal(A.todense(), expected)
  with pytest.raises(SparseFormatError, match=r"SparseArray.from_buffers: shape has shape "
                     r"\(4, 5\)"):
    js.SparseArray.from_buffers(jnp.ones((2, 2, 3)), [jnp.array([0, 1, 2]), jnp.array([1, 0])],
                                shape=(4, 5), format=js.BSR((2, 3)))


# -- conversions ------------------------------------------------------------------------------
OTHER = {"csr": js.CSR, "csc": js.CSC, "coo": js.COO, "dcsr": js.DCSR,
         "dense": js.Format(js.dense, js.dense)}


@pytest.mark.parametrize("name", list(OTHER))
def test_asformat_both_ways(name):
  x = blocky(2)
  A = js.from_dense(x, format=js.BSR((2, 4)), nse=n_blocks(x, (2, 4)) + 1)
  B = A.asformat(OTHER[name])
  assert B.format == OTHER[name]
  np.testing.assert_array_equal(B.todense(), x)
  # back, from an array of that format with padding
  C = js.from_dense(x, format=OTHER[name], nse=None if name == "dense" else int((x != 0).sum()) + 3)
  for block in [(2, 4), (3, 2)]:
    D = C.asformat(js.BSR(block))
    assert D.format == js.BSR(block)
    np.testing.assert_array_equal(D.todense(), x)
    assert D.nse == (n_blocks(x, block) if name != "dense" else 48 // (block[0] * block[1]))


def test_asformat_between_blocked():
  x = blocky(3)
  A = js.from_dense(x, format=js.BSR((2, 4)), nse=6)
  for fmt in [js.blocked(js.CSC, (2, 4)), js.blocked(js.COO, (2, 4)), js.blocked(js.DCSR, (2, 4)),
              js.BSR((3, 2)), js.blocked(js.CSC, (1, 8))]:
    B = A.asformat(fmt)
    assert B.format == fmt
    np.testing.assert_array_equal(B.todense(), x)
    np.testing.assert_array_equal(B.asformat(js.BSR((2, 4))).todense(), x)
  assert A.asformat(js.blocked(js.CSC, (2, 4))).nse == 6       # same blocks: nse kept
  B = A.asformat("csr")
  assert B.nse == 6 * 8 and int(B.nnz) == 8 * n_blocks(x, (2, 4))   # block elements, zeros too


def test_asformat_jit_vmap():
  x = blocky(4, batch=(2,))
  A = js.from_dense(x, format=js.BSR((2, 4)), n_batch=1, nse=5)
  to_csr = jax.jit(lambda A: A.asformat("csr"))
  np.testing.assert_array_equal(to_csr(A).todense(), x)
  C = js.from_dense(x, n_batch=1)
  back = jax.jit(lambda C: C.asformat(js.BSR((3, 2)).replace(n_batch=1)))(C)
  assert back.nse == min(C.nse, 2 * 4)            # under jit: min(entries, grid cells)
  np.testing.assert_array_equal(back.todense(), x)
  np.testing.assert_array_equal(
      jax.vmap(lambda A: A.asformat(js.CSC).todense())(A), x)


def test_asformat_grad():
  x = blocky(5)
  A = js.from_dense(x, format=js.BSR((2, 4)), nse=5)
  w = np.random.default_rng(5).standard_normal((6, 8)).astype(np.float32)
  g = jax.grad(lambda d: (A.with_data(d).asformat("csr").todense() * w).sum())(A.data)
  expected = (A.with_data(jnp.ones_like(A.data)) * w).data     # w at the stored blocks
  np.testing.assert_array_equal(g, expected)
  np.testing.assert_array_equal(g[int(A.nnz):], 0)              # padding
  g = jax.grad(lambda v: (js.from_coo(np.argwhere(x != 0), v, (6, 8)).asformat(
      js.BSR((2, 4))).todense() * w).sum())(jnp.asarray(x[x != 0]))
  np.testing.assert_array_equal(g, w[x != 0])


ROWS = js.Format(js.compressed, js.dense)


def test_asformat_rows_format_both_ways():
  """BSR ↔ ``Format(compressed, dense)`` (a dense level below the last sparse one is a
  level, not a block dim: both directions raised). A stored row's elements are entries,
  explicit zeros included, so every block its row band touches is stored; the rows of a
  BSR are those its stored blocks cover (exact count eagerly, padding kept out)."""
  x = blocky(11)
  x[1] = 0                                           # a zero row inside a stored block band
  A = js.from_dense(x, format=js.BSR((2, 4)), nse=n_blocks(x, (2, 4)) + 2)
  R = A.asformat(ROWS)
  band_rows = np.kron((x.reshape(3, 2, 2, 4) != 0).any(axis=(1, 3)), np.ones((2, 1)))
  assert R.format == ROWS and R.nse == int(band_rows.any(1).sum())
  np.testing.assert_array_equal(R.todense(), x)
  C = js.from_dense(x, format=ROWS, nse=int((x != 0).any(1).sum()) + 1)
  back = C.asformat(js.BSR((2, 4)))
  stored_rows = (x != 0).any(1)[:, None] * np.ones((1, 8))
  assert back.nse == n_blocks(stored_rows, (2, 4))
  np.testing.assert_array_equal(back.todense(), x)
  Rj = jax.jit(lambda A: A.asformat(ROWS))(A)        # under jit: the relayout's capacity
  np.testing.assert_array_equal(Rj.todense(), x)
  w = np.random.default_rng(11).standard_normal(x.shape).astype(np.float32)
  g = jax.grad(lambda d: (C.with_data(d).asformat(js.BSR((2, 4))).todense() * w).sum())(C.data)
  np.testing.assert_array_equal(g, (C.with_data(jnp.ones_like(C.data)) * w).data)


@pytest.mark.parametrize("base", ["dense", "coo-nonunique"])
def test_asformat_into_grids_without_coordinate_slots(base):
  """Blocked formats whose grid is all dense or non-unique (they raised 'the slots of a
  coordinate list need a unique format'): the blocks are gathered on a hypersparse grid
  and the block view converted; batch dims, jit and vmap."""
  grid = js.Format(js.dense, js.dense) if base == "dense" else js.Format(
      js.compressed(unique=False), js.singleton(unique=False))
  fmt = js.blocked(grid, (2, 4))
  x = blocky(12, batch=(2,))
  C = js.from_dense(x, format="csr", n_batch=1, nse=int((x != 0).sum(axis=(1, 2)).max()) + 2)
  B = C.asformat(fmt.replace(n_batch=1))
  assert B.format == fmt.replace(n_batch=1)
  if base == "dense":
    assert B.nse == 6
  np.testing.assert_array_equal(B.todense(), x)
  Bj = jax.jit(lambda C: C.asformat(fmt.replace(n_batch=1)))(C)
  np.testing.assert_array_equal(Bj.todense(), x)
  one = js.from_dense(x[0], format="csr")
  np.testing.assert_array_equal(one.asformat(fmt).todense(), x[0])
  np.testing.assert_array_equal(
      jax.vmap(lambda C: C.asformat(fmt).todense())(C), x)


# -- scipy --------------------------------------------------------------------------------------
def test_scipy_both_ways():
  x = blocky(6)
  A = js.from_dense(x, format=js.BSR((2, 4)), nse=7)
  S = A.to_scipy()
  assert isinstance(S, sp.bsr_array) and S.blocksize == (2, 4)
  np.testing.assert_array_equal(S.toarray(), x)
  ref = sp.bsr_array(x.astype(np.float64), blocksize=(2, 4))
  np.testing.assert_array_equal(S.indptr, ref.indptr)
  np.testing.assert_array_equal(S.indices, ref.indices)
  B = js.from_scipy(ref)
  assert B.format == js.BSR((2, 4)) and B.nse == ref.indices.size
  np.testing.assert_array_equal(B.todense(), x.astype(np.float64))
  assert js.from_scipy(ref, nse=9).nse == 9
  T = A.T.to_scipy()                                # blocked CSC: converted to BSR first
  assert T.blocksize == (4, 2)
  np.testing.assert_array_equal(T.toarray(), x.T)
  with pytest.raises(SparseCapacityError, match="from_scipy: the matrix has"):
    js.from_scipy(ref, nse=1)


def test_layout_of_a_blocked_array_says_why_not():
  """The backstop under every op: a blocked array's buffers have its block view's layout."""
  A = js.from_dense(blocky(7), format=js.BSR((2, 4)))
  with pytest.raises(SparseFormatError, match=r"SparseArray.layout: .* has a blocked format; "
                     r"its buffers are those of its block view.*A.asformat\('csr'\)"):
    A.layout
  assert A.block_view().layout.format == js.BSR((2, 4)).storage


def test_docs_blocks_examples_run():
  import pathlib
  import re
  text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "blocks.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert len(blocks) == 2
  for k, src in enumerate(blocks):
    exec(compile(src, f"docs/blocks.md python block {k}", "exec"), {})
