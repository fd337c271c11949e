"""Structure workloads: format conversions, coalescing and graph construction.

Each row times jscorch (under ``jit``, inputs on device) against scipy (and
``jax.experimental.sparse`` where it has the operation). The reference is the
scipy result, compared as a sparse matrix (values over the union of patterns).

Rows (keys for ``python -m jscorch bench --only``):
  * ``CSR->CSC``: ``A.asformat("csc")`` vs scipy ``tocsc()``;
  * ``CSR->COO``: ``A.asformat("coo")`` vs a jitted copy of the CSR buffers (the floor:
    the conversion only expands ``pos``) and scipy ``tocoo()``;
  * ``COO->CSR``: a sorted COO to CSR vs scipy ``tocsr()`` and ``BCSR.from_bcoo``;
  * ``sum_duplicates``: unordered COO entries with repeats vs scipy ``tocsr()`` (which
    sums them) and ``BCOO.sum_duplicates``;
  * ``from_edge_index``: ``js.graph.from_edge_index`` end to end (eager, from a device
    ``[2, E]`` array) vs scipy ``coo_matrix((w, (r, c))).tocsr()``;
  * ``A+B`` / ``maximum``: the union of two CSR matrices' patterns vs scipy ``A + B`` /
    ``A.maximum(B)`` and BCOO ``+`` (which concatenates the entries, no merge).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jsparse

import jscorch as js
from jscorch.bench.data import Csr
from jscorch.bench.workloads import Contender, Workload

ROWS = ("CSR->CSC", "CSR->COO", "COO->CSR", "sum_duplicates", "from_edge_index")


def _to_scipy(A):
  return ((A.asformat("csr") if A.format.name != "csr" else A).to_scipy(),)


def _scipy_result(m):
  return (m.tocsr(),)


def csr_to_csc(m: Csr) -> Workload:
  sm = m.scipy()
  A = js.from_scipy(sm)
  conv = jax.jit(lambda A: A.asformat("csc"))
  contenders = [
      Contender("jscorch", lambda: conv(A), lambda r: (r.to_scipy().tocsr(),)),
      Contender("scipy", lambda: sm.tocsc(), _scipy_result),
  ]
  return Workload("CSR->CSC", f"{m.name} nnz={m.nnz}", (sm,), contenders,
                  {"jax.experimental.sparse": "no CSC format"})


def csr_to_coo(m: Csr) -> Workload:
  sm = m.scipy()
  A = js.from_scipy(sm)
  conv = jax.jit(lambda A: A.asformat("coo"))
  copy = jax.jit(lambda bufs: jax.tree.map(lambda x: x + 0, bufs))
  bufs = (A.data, *A.indices)
  bcsr = jsparse.BCSR((A.data, A.indices[1], A.indices[0]), shape=A.shape)
  to_bcoo = jax.jit(lambda b: b.to_bcoo())
  contenders = [
      Contender("jscorch", lambda: conv(A), lambda r: (r.to_scipy().tocsr(),)),
      Contender("buffer copy", lambda: copy(bufs), lambda r: (sm,)),
      Contender("scipy", lambda: sm.tocoo(), _scipy_result),
      Contender("BCSR.to_bcoo", lambda: to_bcoo(bcsr),
                lambda r: (js.from_bcoo(r).to_scipy().tocsr(),)),
  ]
  return Workload("CSR->COO", f"{m.name} nnz={m.nnz}", (sm,), contenders)


def coo_to_csr(m: Csr) -> Workload:
  sm = m.scipy()
  A = js.from_scipy(sm).asformat("coo")
  coo = sm.tocoo()
  conv = jax.jit(lambda A: A.asformat("csr"))
  bcoo = A.to_bcoo()
  from_bcoo = jax.jit(jsparse.BCSR.from_bcoo)
  contenders = [
      Contender("jscorch", lambda: conv(A), _to_scipy),
      Contender("scipy", lambda: coo.tocsr(), _scipy_result),
      Contender("BCSR.from_bcoo", lambda: from_bcoo(bcoo),
                lambda r: (js.from_bcoo(r.to_bcoo()).to_scipy().tocsr(),)),
  ]
  return Workload("COO->CSR", f"{m.name} nnz={m.nnz}", (sm,), contenders)


def _unordered(n: int, entries: int, seed: int):
  """``entries`` random coordinates of an ``n x n`` matrix, about 10% of them repeated."""
  rng = np.random.default_rng(seed)
  base = entries - entries // 10
  rows, cols = rng.integers(0, n, base), rng.integers(0, n, base)
  rep = rng.integers(0, base, entries - base)
  rows, cols = np.concatenate([rows, rows[rep]]), np.concatenate([cols, cols[rep]])
  order = rng.permutation(entries)
  values = rng.standard_normal(entries).astype(np.float32)
  return rows[order].astype(np.int32), cols[order].astype(np.int32), values


def sum_duplicates(n: int, entries: int) -> Workload:
  import scipy.sparse as sp
  rows, cols, values = _unordered(n, entries, seed=5)
  want = sp.coo_matrix((values.astype(np.float64), (rows, cols)), shape=(n, n)).tocsr()
  unordered = js.Format(js.compressed(ordered=False, unique=False),
                        js.singleton(ordered=False, unique=False))
  coords = np.stack([rows, cols], 1)
  A = js.from_coo(coords, values, (n, n), format=unordered, nse=entries)
  coalesce = jax.jit(js.sum_duplicates)
  coo = sp.coo_matrix((values, (rows, cols)), shape=(n, n))
  bcoo = jsparse.BCOO((jnp.asarray(values), jnp.asarray(coords)), shape=(n, n))
  bcoo_sum = jax.jit(lambda b: b.sum_duplicates(nse=entries))
  contenders = [
      Contender("jscorch", lambda: coalesce(A), _to_scipy),
      Contender("scipy", lambda: coo.tocsr(), _scipy_result),
      Contender("BCOO", lambda: bcoo_sum(bcoo),
                lambda r: (js.from_bcoo(r).to_scipy().tocsr(),)),
  ]
  return Workload("sum_duplicates", f"uniform{n} {entries} unordered entries", (want,),
                  contenders)


def from_edge_index(n: int, edges: int) -> Workload:
  import scipy.sparse as sp
  rows, cols, _ = _unordered(n, edges, seed=6)
  ones = np.ones(edges, np.float32)
  want = sp.coo_matrix((ones.astype(np.float64), (rows, cols)), shape=(n, n)).tocsr()
  ei = jnp.asarray(np.stack([rows, cols]))
  host = (rows, cols)
  contenders = [
      Contender("jscorch", lambda: js.graph.from_edge_index(ei, n), _to_scipy),
      Contender("scipy", lambda: sp.coo_matrix((ones, host), shape=(n, n)).tocsr(),
                _scipy_result),
  ]
  return Workload("from_edge_index", f"uniform{n} {edges} edges", (want,), contenders)


def union(size: dict, op: str) -> Workload:
  """``A + B`` (op ``"add"``) or ``js.maximum(A, B)`` of two uniform CSR matrices."""
  from jscorch.bench import data
  n = 1 << size["scale"]
  ma, mb = data.uniform(n, size["edges"], seed=1), data.uniform(n, size["edges"], seed=2)
  sa, sb = ma.scipy(), mb.scipy()
  A, B = js.from_scipy(sa), js.from_scipy(sb)
  if op == "add":
    want = sa.astype(np.float64) + sb
    ours = jax.jit(lambda A, B: A + B)
    theirs = lambda: sa + sb
  else:
    want = sa.astype(np.float64).maximum(sb)
    ours = jax.jit(js.maximum)
    theirs = lambda: sa.maximum(sb)
  contenders = [Contender("jscorch", lambda: ours(A, B), _to_scipy),
                Contender("scipy", theirs, _scipy_result)]
  skipped = {}
  if op == "add":
    ba, bb = jsparse.BCOO.from_scipy_sparse(sa), jsparse.BCOO.from_scipy_sparse(sb)
    badd = jax.jit(lambda x, y: x + y)
    contenders.append(Contender("BCOO", lambda: badd(ba, bb),
                                lambda r: (js.from_bcoo(r).to_scipy().tocsr(),)))
  else:
    skipped["BCOO"] = "no sparse maximum of two BCOO arrays"
  return Workload("A+B" if op == "add" else "maximum", f"{ma.name} + {mb.name} nnz={ma.nnz}",
                  (want.tocsr(),), contenders, skipped)


#: The union rows: (key, make(size) -> Workload).
UNION_ROWS: list = [("A+B", lambda size: union(size, "add")),
                    ("maximum", lambda size: union(size, "maximum"))]


def build_workloads(size: dict, only: set | None) -> list:
  """The structure rows for a size of :data:`jscorch.bench.runner.SIZES`."""
  from jscorch.bench import data
  n = 1 << size["scale"]
  entries = size["edges"]
  specs = [("CSR->CSC", lambda: csr_to_csc(data.uniform(n, entries, seed=1))),
           ("CSR->COO", lambda: csr_to_coo(data.uniform(n, entries, seed=1))),
           ("COO->CSR", lambda: coo_to_csr(data.uniform(n, entries, seed=1))),
           ("sum_duplicates", lambda: sum_duplicates(n, size["coalesce"])),
           ("from_edge_index", lambda: from_edge_index(n, size["graph_edges"]))]
  specs += [(key, lambda make=make: make(size)) for key, make in UNION_ROWS]
  return [make for key, make in specs if only is None or key in only]
