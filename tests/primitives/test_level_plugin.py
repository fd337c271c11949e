"""A new level type defined here, registered, and used end to end (docs/levels.md).

``NOfM`` is an N:M structured level: each parent position owns ``ceil(size / m)``
groups of ``m`` coordinates, and each group stores exactly ``n`` slots (``crd``
only, no ``pos``); unused slots are padding (coordinate = dimension size). With a
dense parent it is the 2:4 sparsity of sparse tensor cores. Nothing outside this
module changes: layouts, ``from_dense`` / ``todense``, host checks and the portable
einsum (SpMM) all work by asking the level.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
from jscorch.primitives import SparseFormatError, einsum_kernel
from jscorch.primitives.formats import Level, check_coordinates, level_type, register_level
from jscorch.primitives.layout import Layout

import util


@register_level
@dataclasses.dataclass(frozen=True, repr=False)
class NOfM(Level):
  """At most ``n`` stored coordinates in every group of ``m`` (``crd`` only)."""
  name = "n_of_m"
  buffers = ("crd",)
  n: int = 2
  m: int = 4

  def __post_init__(self):
    if not (0 < self.n <= self.m) or not (self.ordered and self.unique):
      raise SparseFormatError(
          f"NOfM: expected 0 < n <= m, ordered and unique; got n={self.n}, m={self.m}, "
          f"ordered={self.ordered}, unique={self.unique}.")

  def __repr__(self):
    return f"n_of_m({self.n}:{self.m})"

  def _slots(self, size):             # slots per parent position
    return -(-size // self.m) * self.n

  def capacity(self, parent_cap, size, nse, last):
    return parent_cap * self._slots(size)

  def fixed_capacity(self, parent_cap, size):
    return parent_cap * self._slots(size)

  def positions(self, bufs, parent_cap, cap, size, idt):
    (crd,) = bufs
    return jnp.arange(cap, dtype=idt) // max(self._slots(size), 1), crd

  def assemble(self, crd, node, valid, used, parent_cap, cap, size, idt):
    # Leaves arrive sorted by (parent, coordinate): rank them within their group.
    groups = -(-size // self.m)
    key = node * groups + crd // self.m
    i = jnp.arange(crd.shape[0], dtype=idt)
    first = jnp.concatenate([jnp.ones((1,), bool), key[1:] != key[:-1]]) if crd.size else valid
    start = jax.lax.cummax(jnp.where(first, i, 0))
    keep = valid & (i - start < self.n)          # entries past n in a group are dropped
    slot = jnp.where(keep, key * self.n + i - start, cap).astype(idt)
    out = jnp.full(cap, size, idt).at[slot].set(crd, mode="drop")
    return (out,), slot, keep.sum()

  def check(self, bufs, parent_live, cap, size, k, func, where):
    crd = np.asarray(bufs[0])
    here = np.arange(cap)
    parent = here // max(self._slots(size), 1)
    group = (here // self.n) % max(-(-size // self.m), 1)
    live = np.asarray(parent_live, bool)[np.minimum(parent, len(parent_live) - 1)] & (crd != size)
    check_coordinates(crd, live, size, k, func, where)
    outside = live & (crd // self.m != group)
    if np.any(outside):
      i = int(np.argmax(outside))
      raise SparseFormatError(
          f"{func}: coordinate {int(crd[i])} at level {k}{where}, position {i} lies outside "
          f"its group {int(group[i])} of {self.m}. Store each group's coordinates in its slots.")
    step = np.diff(np.where(live, crd, size).reshape(-1, self.n), axis=1) if self.n > 1 else None
    if step is not None and np.any(step <= 0):
      raise SparseFormatError(
          f"{func}: the slots of a group of level {k}{where} must hold increasing coordinates, "
          "padding last.")
    return parent, crd, live


NM = js.Format(js.dense, NOfM(n=2, m=4))


def _two_of_four(seed, shape):
  """A random `[rows, cols]` matrix with at most 2 nonzeros in every group of 4 (some fewer)."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.5, 2.0, shape) * rng.choice([-1, 1], shape)
  groups = x.reshape(shape[0], -1, 4)
  keep = np.zeros(groups.shape, bool)
  for r, g in np.ndindex(groups.shape[:2]):
    keep[r, g, rng.choice(4, rng.integers(0, 3), replace=False)] = True
  return (groups * keep).reshape(shape).astype(np.float32)


def test_registered_and_spelled_like_builtin_levels():
  assert level_type("n_of_m") is NOfM
  assert Level("n_of_m", n=1, m=2) == NOfM(n=1, m=2) and NOfM(n=1, m=2) != NOfM(n=2, m=4)
  assert repr(NM) == "Format(dense, n_of_m(2:4))"
  assert NM == js.Format(js.dense, NOfM(n=2, m=4)) and hash(NM) == hash(js.Format(js.dense, NOfM()))
  assert (NM.all_dense, NM.ordered, NM.unique) == (False, True, True)
  assert (NOfM().has_pos, NOfM().has_crd, NOfM().has_locate) == (False, True, False)


def test_layout_asks_the_level():
  lay = Layout.make(NM, (3, 8), nse=12)
  assert lay.capacities == (3, 12)
  assert lay.index_shapes == ((1, "crd", (12,)),)
  with pytest.raises(SparseFormatError, match=r"from_dense: the last level of format "
                     r"Format\(dense, n_of_m\(2:4\)\) stores a fixed number of entries; got "
                     r"nse=5, expected 12. Pass nse=12"):
    Layout.make(NM, (3, 8), nse=5, func="from_dense")


def test_from_dense_todense_round_trip():
  x = _two_of_four(0, (3, 8))
  A = js.from_dense(x, format=NM, nse=12)
  crd = np.asarray(A.crd(1)).reshape(3, 2, 2)          # (row, group, slot)
  for r, g in np.ndindex(3, 2):
    stored = np.flatnonzero(x[r, 4 * g:4 * g + 4]) + 4 * g
    np.testing.assert_array_equal(crd[r, g, :len(stored)], stored)
    assert np.all(crd[r, g, len(stored):] == 8)        # padding slots hold the size
  util.assert_allclose(A.todense(), x, np.float32)
  util.assert_allclose(jax.jit(lambda a: a.todense())(A), x, np.float32)


def test_from_buffers_runs_the_level_checks():
  data = np.ones(4, np.float32)
  ok = js.SparseArray.from_buffers(data, [np.array([1, 3, 4, 8])], shape=(1, 8), format=NM)
  util.assert_allclose(ok.todense(), np.array([[0, 1, 0, 1, 1, 0, 0, 0]]), np.float32)
  with pytest.raises(SparseFormatError, match=r"coordinate 5 at level 1, position 1 lies "
                     r"outside its group 0 of 4"):
    js.SparseArray.from_buffers(data, [np.array([1, 5, 6, 8])], shape=(1, 8), format=NM)


@pytest.mark.parametrize("other", ["csr", "coo"])
def test_conversions_to_and_from_builtin_formats(other, monkeypatch):
  monkeypatch.setattr(js.config, "lowering", "portable")
  x = _two_of_four(3, (4, 8))
  A = js.from_dense(x, format=other).asformat(NM, nse=16)
  assert A.format == NM
  np.testing.assert_array_equal(A.crd(1), js.from_dense(x, format=NM, nse=16).crd(1))
  B = A.asformat(other)
  assert B.format.name == other
  util.assert_allclose(B.todense(), x, np.float32)


@pytest.mark.parametrize("lowering", ["auto", "portable"])
def test_spmm(lowering, monkeypatch):
  """SpMM on the new level: the portable lowering; under "auto" the kernel path falls back
  (the level type has no loop-nest ``iterate``) with the reason recorded."""
  monkeypatch.setattr(js.config, "lowering", lowering)
  x = _two_of_four(1, (4, 8))
  A = js.from_dense(x, format=NM, nse=16)
  X = np.random.default_rng(2).standard_normal((8, 3)).astype(np.float32)
  expected = util.reference(x) @ util.reference(X)
  util.assert_allclose(js.einsum("ij,jk->ik", A, X), expected, np.float32)
  util.assert_allclose(jax.jit(lambda a, b: a @ b)(A, X), expected, np.float32)
  assert not NOfM().has_iterate and math.prod(A.data.shape) == 16
  if lowering == "auto":
    assert einsum_kernel.last_decisions[-1][1] == "level type"
