"""The kernel planner: from a spec and the structures it iterates, a loop-nest :class:`Kernel`.

:func:`lower` takes a :class:`KernelPlan` (the spec, the *driver* structure that
all sparse sources share, and the partners co-iterated with it) and makes every
scheduling decision, writing it into the IR (:mod:`.loopnest`):

* **loop order**: the driver's batch dims and levels in storage order (the order of
  :attr:`planner.Plan.loop_order`), then the free indices;
* **parallel unit** (``Parallel.OUTER`` on the outer loop) when distinct units
  write distinct outputs (*owner*), and the **work balance** of its chunks (stored
  entries before each unit; power-law rows);
* **race strategy**: ``Race.STORE`` when each output row is written once by its
  owner, else ``Race.ACCUMULATE`` into a zeroed output;
* the **vector index** (the output's contiguous last axis, when free; other free
  indices, summed or further output axes, are looped around the leaf), with products
  **hoisted** to the level where their indices are bound
  (``out[i,:] = Σ_j A_ij X[j,:]`` keeps ``Σ_j`` in registers; MTTKRP sums over
  ``k`` before multiplying by ``J[j,:]``) and gathered rows prefetched; otherwise
  a scalar kernel: loops over the free indices, a scalar sum of the summed ones;
* **transposition**: a (dense, compressed) driver whose order conflicts with the
  output is re-sorted column-major in a prologue workspace (Scorch), when that
  makes the units owners and the parallel split pays for the re-sort (wide output
  rows, :func:`transpose_pays`); else it accumulates serially into the output;
* **joins** (:func:`join_loops`): sparse structures that are not co-iterated with the
  driver are joined inside its loops, one after the other — levels whose index is
  bound are located (``loopnest.Locate``), the others iterated (new indices) or
  intersected with an earlier joined loop (``A[i,:] . B^T[k,:]`` over ``j``).

How each level is iterated is the level's own business (``Level.iterate``).

Example:
  >>> import numpy as np
  >>> from jscorch.primitives.layout import Layout
  >>> from jscorch.primitives.formats import CSR
  >>> from jscorch.primitives.einsum_spec import EinsumSpec, Operand
  >>> from jscorch.primitives.loopnest import Parallel, Race
  >>> lay = Layout(CSR, (6, 7), 20)
  >>> spec = EinsumSpec((Operand((0, 1), lay), Operand((1, 2))), out=(0, 2),
  ...                   sizes=((0, 6), (1, 7), (2, 16)))
  >>> k = lower(KernelPlan(spec, lay, (0, 1), 1, np.dtype(np.float32)))
  >>> k.body.parallel is Parallel.OUTER, k.race is Race.STORE, k.vector_index
  (True, True, 'f2')
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import loopnest as ir
from .einsum_spec import DENSE_OUT, SAMPLED_OUT, EinsumSpec, Operand
from .layout import Layout

VECTOR_BYTES = 32          # AVX2; GCC splits wider-than-native vectors by itself
# Entries x free size below which the units run as one serial chunk. Handing chunks to
# XLA's thread pool costs 10-40 us (waking a worker), about what half of 2**19 products
# take on one core: a Cora-sized SpMM (10k entries x 16) runs in 10 us serially, 21-47 us
# split, and a 2-layer Cora GCN inference goes 0.24 -> 0.19 ms (it was 2**15).
SERIAL_WORK = 1 << 19
TRANSPOSE_ROW_BYTES = 128  # output rows wider than this may re-sort the driver (transpose_pays)
PREFETCH_DISTANCE = 16
CACHED_BYTES = 1 << 18     # a dense operand this small stays in cache: not prefetched
INTERLEAVE = 2             # accumulator sets of a reduction over a compressed level ...
INTERLEAVE_CHAINS = 4      # ... of at most this many registers (vectors + scalar lanes)
_CACHE_LINE = 64


@dataclasses.dataclass(frozen=True)
class KernelPlan:
  """The structures a kernel iterates (static, hashable): the planner's input.

  Attributes:
    spec: the einsum.
    driver: the shared structure of all sparse sources.
    driver_ids: index ids of the driver's batch dims then its levels (storage order).
    index_input: flat input position of the driver's first index buffer.
    dtype: value dtype (float32/float64).
    transpose: iterate a (dense, compressed) driver column-major, from a transposed
      workspace built in the kernel's prologue.
    partners: other sparse structures ``(layout, index_input)`` with the driver's
      format and shape but their own patterns, co-iterated level by level with it
      (an intersection).
    structure_of: for each operand, the structure holding it (0 = driver, s = the
      s-th partner, -1 = dense).
    pattern_structure: the structure whose leaves are a sampled output's pattern.
    joins: structures ``(layout, index_input, ids)`` joined inside the driver's (and
      partners') loops, one after the other (``ids``: their batch dims then levels, in
      storage order, as ``driver_ids``): the leading levels, whose coordinates are bound
      already, are located (``Level.locate``), the rest iterated, binding new indices
      (``out[i,k] += A[i,j] B[j,k]`` of CSR ``A``, ``B``: ``B``'s row located at ``j``).
      Numbered after the partners.
  """
  spec: EinsumSpec
  driver: Layout
  driver_ids: tuple[int, ...]
  index_input: int
  dtype: np.dtype
  transpose: bool = False
  partners: tuple[tuple[Layout, int], ...] = ()
  structure_of: tuple[int, ...] = ()
  pattern_structure: int = 0
  joins: tuple[tuple[Layout, int, tuple[int, ...]], ...] = ()

  def transposable(self) -> bool:
    """A 2-level (dense, compressed) driver without batch dims or partners."""
    lay = self.driver
    lv = lay.format.levels
    return lay.n_batch == 0 and len(lv) == 2 and lv[0].full and lv[1].has_pos \
        and not self.transpose and not self.partners and not self.joins

  def transposed(self) -> KernelPlan:
    return dataclasses.replace(self, driver_ids=self.driver_ids[::-1], transpose=True)


def _strides(shape):
  out, acc = [], 1
  for s in reversed(shape):
    out.append(acc)
    acc *= s
  return tuple(reversed(out))


def _sfx(s) -> str:
  return f"_{s}" if s else ""


class _Planner:
  """The analysis of one :class:`KernelPlan` and the loop nest it builds."""

  def __init__(self, kp: KernelPlan):
    self.kp = kp
    self.spec = spec = kp.spec
    self.lay = lay = kp.driver
    self.nb = lay.n_batch
    self.levels = lay.format.levels
    self.L = len(self.levels)
    self.caps = lay.capacities
    self.sizes = lay.level_sizes
    if kp.transpose:             # iterate (dense over the old inner dim, compressed)
      self.sizes = self.sizes[::-1]
      self.caps = (self.sizes[0], lay.nse)
    self.B = math.prod(lay.batch_shape)
    self.NSE = lay.nse
    self.S = 1 + len(kp.partners)
    self.structs = [(lay, kp.index_input)] + list(kp.partners) + \
        [(j_lay, at) for j_lay, at, _ in kp.joins]
    # Co-iterating a compressed first level is one merge per batch element (one unit).
    self.unit_width = 1 if self.S > 1 and not self.levels[0].full else self.caps[0]
    # Co-iterating ordered COO (non-unique or singleton levels): one lexicographic merge
    # over whole coordinate tuples at level 0, binding every level (TupleIntersect).
    self.merge = self.S > 1 and any(l.branchless or not l.unique
                                    for lay_, _ in self.structs[:self.S]
                                    for l in lay_.format.levels)
    # coordinate variable of each bound id (first occurrence)
    self.coord_var: dict[int, str] = {}
    self.level_of: dict[int, int] = {}
    for d, i in enumerate(kp.driver_ids[:self.nb]):
      self.coord_var.setdefault(i, f"b{d}")
      self.level_of.setdefault(i, -1)
    for l, i in enumerate(kp.driver_ids[self.nb:]):
      if i not in self.coord_var:
        self.coord_var[i] = f"c{l}"
        self.level_of[i] = l
    # joined structures: located levels, then loops binding new indices (join_loops)
    scheduled = join_loops([(ids[lay_.n_batch:], lay_.format.levels)
                            for lay_, _, ids in kp.joins], self.level_of, self.L)
    assert scheduled is not None, "the joined structures can be joined"
    self.joined, depth_of = scheduled
    for i, d in depth_of.items():
      if i not in self.coord_var:
        self.coord_var[i], self.level_of[i] = f"c{d}", d
    self.D = self.L + len(self.joined)     # loop depth: driver levels, then joined levels
    self.bound = set(self.coord_var)
    self.free = [i for i in dict.fromkeys(
        [i for op in spec.operands for i in op.indices] + list(self.out_free_ids()))
        if i not in self.bound]
    itemsize = np.dtype(kp.dtype).itemsize
    self.lanes = VECTOR_BYTES // itemsize
    self.itemsize = itemsize

  # -- decisions ------------------------------------------------------------------------
  def out_free_ids(self):
    """The output's indices no loop binds (a sampled output's block indices, unless a
    joined level binds one: then each of its coordinates writes its own element)."""
    ids = self.spec.out if self.spec.out_kind == DENSE_OUT else self.spec.out_operand.block
    return [i for i in ids if i not in self.coord_var]

  def size(self, i):
    return self.spec.size(i)

  def factor_level(self, op: Operand) -> int:
    """The level where all of ``op``'s indices are bound (where its factor is hoisted)."""
    if op.sparse:
      return self.D - 1
    return max([self.level_of[i] for i in op.indices if i in self.level_of], default=-1)

  def out_level(self) -> int:
    """The level where the output location is fully bound."""
    if self.spec.out_kind == SAMPLED_OUT:
      return self.D - 1
    return max([self.level_of[i] for i in self.spec.out if i in self.level_of], default=-1)

  def owner(self) -> bool:
    """Distinct units write distinct output locations."""
    if self.spec.out_kind == SAMPLED_OUT:
      return True
    out = set(self.spec.out)
    batch_ok = all(i in out for i in self.kp.driver_ids[:self.nb])
    first = self.kp.driver_ids[self.nb]
    return batch_ok and first in out and self.levels[0].unique

  def store_ok(self) -> bool:
    """Each output row is written exactly once, by the unit that owns it."""
    if self.spec.out_kind != DENSE_OUT or not self.owner() or not self.levels[0].full:
      return False
    bound_out = [i for i in self.spec.out if i in self.coord_var]
    expected = list(self.kp.driver_ids[:self.nb]) + [self.kp.driver_ids[self.nb]]
    return sorted(bound_out) == sorted(expected) and len(set(expected)) == len(expected) \
        and self.out_level() == 0 and self.vector_mode() and not self.looped_out() \
        and not (self.leaf_loops() and self.D == 1)    # a store inside the leaf's loops

  def vector_mode(self) -> bool:
    """The output's contiguous last axis is free and every operand's last (the vector
    index); the other free indices, summed or further output axes, are looped at the leaf
    (:meth:`leaf_loops`)."""
    if self.spec.out_kind != DENSE_OUT:
      return False
    if not self.free:
      return True
    r = self.vector_index()
    if r is None:                   # nothing to vectorise: summed indices stay scalar
      return False
    for op in self.spec.operands:
      ids = op.block if op.sparse else op.indices
      if r in ids and ids[-1] != r:
        return False
      if op.sparse and any(i != r for i in op.block):
        return False
    return True

  def vector_index(self):
    """The output's last axis when it is free (the vector index in vector mode), or None;
    a sampled output's one free (block) index."""
    out_free = self.out_free_ids()
    if self.spec.out_kind != DENSE_OUT:
      return out_free[0] if len(out_free) == 1 and out_free[0] in self.free else None
    r = self.spec.out[-1] if self.spec.out else None
    return r if r in out_free and r in self.free else None

  def looped_out(self) -> list:
    """The free output axes other than the vector index: looped at the leaf, which then
    accumulates into the output itself (``dW[e, i, :] += g * x[t, i] * G[t, :]`` for the
    MoE gradient ``te,ti,to->eio``)."""
    r = self.vector_index()
    return [i for i in self.out_free_ids() if i != r]

  def leaf_loops(self) -> list:
    """Free indices other than the vector index, looped around the leaf's product: summed
    ones (``y[t, :] += g * x[t, i] * W[e, i, :]`` for the MoE einsum ``te,ti,eio->to``)
    and :meth:`looped_out`."""
    r = self.vector_index()
    return [i for i in self.free if i != r]

  # -- expressions ------------------------------------------------------------------------
  def coord(self, i, override=None) -> ir.Coord:
    if override and i in override:
      return ir.Coord(override[i])
    return ir.Coord(self.coord_var.get(i, f"f{i}"))

  def dense_offset(self, op: Operand, override=None) -> ir.Affine:
    shape = tuple(self.size(i) for i in op.indices)
    return ir.Affine(tuple((self.coord(i, override), s)
                           for i, s in zip(op.indices, _strides(shape))))

  def structure(self, k) -> int:
    """The structure holding operand k's pattern (k = None: the sampled output)."""
    if k is None:
      return self.kp.pattern_structure
    return self.kp.structure_of[k] if self.kp.structure_of else 0

  def value_offset(self, op: Operand, k=None) -> ir.Affine:
    block = op.block
    blk = math.prod(self.size(i) for i in block)
    leaf = ir.Var("leaf" + _sfx(self.structure(k)))
    return ir.Affine(((leaf, blk),) + tuple(
        (self.coord(i), s) for i, s in zip(block, _strides(tuple(self.size(i) for i in block)))))

  def out_offset(self) -> ir.Affine:
    if self.spec.out_kind == DENSE_OUT:
      return self.dense_offset(Operand(self.spec.out))
    return self.value_offset(self.spec.out_operand, k=None)

  def load(self, k, op, lanes=False) -> ir.Load:
    off = self.value_offset(op, k) if op.sparse else self.dense_offset(op)
    return ir.Load(f"x{k}", off, lanes)

  # -- iterators --------------------------------------------------------------------------
  def struct_iter(self, l, s, coord=None):
    """Level l of structure s: the level's own iterator (binding ``coord``, default
    ``c{l}``)."""
    levels = self.levels
    if s == 0:                   # the driver (its sizes transposed with it)
      caps, sizes = self.caps, self.sizes
    else:
      lay = self.structs[s][0]
      caps, sizes, levels = lay.capacities, lay.level_sizes, lay.format.levels
    return levels[l].iterate(coord or ir.Coord(f"c{l}"), s, l, sizes[l], caps[l],
                                  caps[l - 1] if l else 1, l == 0 and s < self.S)

  def level_iter(self, l):
    """Level l of the driver, co-iterated with the same level of every partner."""
    if self.S == 1:
      return self.struct_iter(l, 0)
    if self.merge:
      return ir.TupleIntersect(tuple(ir.Coord(f"c{m}") for m in range(self.L)), tuple(
          tuple(self.struct_iter(m, s) for m in range(self.L)) for s in range(self.S)))
    if self.levels[l].full:
      return ir.Range(ir.Coord(f"c{l}"), self.sizes[l], l, tuple(range(self.S)), l == 0)
    return ir.Intersect(ir.Coord(f"c{l}"), tuple(self.struct_iter(l, s) for s in range(self.S)))

  def loop(self, l, body) -> ir.Loop:
    """Level l's loop around ``body``; a repeated index is checked first."""
    checks = []
    ident = self.kp.driver_ids[self.nb + l]
    if self.S == 1 and self.coord_var[ident] != f"c{l}":
      checks.append(ir.SkipUnless(ir.Coord(f"c{l}"), ir.Coord(self.coord_var[ident])))
    over = self.level_iter(l)
    body = tuple(checks) + tuple(body)
    return ir.Loop(over, ir.Parallel.NONE, body, self.interleave(over, body))

  def interleave(self, over, body) -> int:
    """:data:`INTERLEAVE` for the innermost loop of a compressed level that only sums
    into a few registers (an SpMM row of width <= 32 floats, an SpMV row), else 1.

    Each entry's add waits for the previous one's (4 cycles for an FMA): on rows of a
    few dozen entries and few lanes that latency, not memory, bounds the loop. Wider
    rows already have as many independent chains as the FMA units take, and a
    prefetched row (its gathered operand is past the cache) waits on memory instead."""
    if not isinstance(over, ir.Segment) or over.unit:
      return 1
    if any(isinstance(s, (ir.Loop, ir.Prefetch)) for s in body):
      return 1
    sums = [s for s in body if isinstance(s, ir.Accumulate)]
    if not sums or any(not isinstance(s.out, ir.Acc) or _reads_acc(s.value) for s in sums):
      return 1
    if not self.vector_mode():
      return 1
    r = self.vector_index()
    width = self.size(r) if r is not None else 1
    chains = width // self.lanes + width % self.lanes
    return INTERLEAVE if chains <= INTERLEAVE_CHAINS else 1

  def joined_loop(self, l, body) -> list[ir.Stmt]:
    """Loop l over joined structures' levels (an intersection when several), their
    located levels bound first."""
    parts, locates = self.joined[l - self.L]
    binds = []
    for n, m in locates:
      s = self.S + n
      lay = self.structs[s][0]
      ids = self.kp.joins[n][2][lay.n_batch:]
      parent = ir.Pos(s, m - 1) if m else ir.Const(0)
      at = lay.format.levels[m].locate(parent, self.coord(ids[m]), lay.level_sizes[m])
      binds.append(ir.Locate(s, m, at))
    its = tuple(self.struct_iter(level, self.S + n, ir.Coord(f"c{l}")) for n, level in parts)
    over = its[0] if len(its) == 1 else ir.Intersect(ir.Coord(f"c{l}"), its)
    return binds + [ir.Loop(over, ir.Parallel.NONE, tuple(body))]

  def wrap(self, l, body) -> list:
    """``body`` inside level l's loop; a level bound by a tuple merge adds no loop."""
    if self.merge and 0 < l < self.L:
      return list(body)
    if l >= self.L:
      return self.joined_loop(l, body)
    return [self.loop(l, body)]

  def leaves(self) -> list[ir.Stmt]:
    """Each structure's leaf (the position of its values), at the innermost loop."""
    if self.kp.transpose:
      return [ir.Let("leaf", ir.Load("perm", ir.Pos(0, self.L - 1)))]
    return [ir.Let("leaf" + _sfx(s), ir.Add((ir.Mul((ir.Var("b"), ir.Const(lay.nse))),
                                            ir.Pos(s, len(lay.format.levels) - 1))))
            for s, (lay, _) in enumerate(self.structs)]

  # -- the nest ---------------------------------------------------------------------------
  def kernel(self) -> ir.Kernel:
    spec, kp = self.spec, self.kp
    vec = self.vector_mode()
    body = self.vector_body(-1) if vec else self.scalar_body()
    batch_coords = tuple(ir.Coord(f"b{d}") for d in range(self.nb))
    checks = tuple(ir.SkipUnless(ir.Coord(f"b{d}"), ir.Coord(self.coord_var[i]))
                   for d, i in enumerate(kp.driver_ids[:self.nb])
                   if self.coord_var[i] != f"b{d}")
    units = ir.Units(tuple(self.lay.batch_shape), self.unit_width, batch_coords)
    owner = self.owner()
    outer = ir.Loop(units, ir.Parallel.OUTER if owner else ir.Parallel.NONE,
                    checks + tuple(body))
    free_size = math.prod(self.size(i) for i in self.free)
    work = self.B * self.NSE * max(free_size, 1)
    balance = ir.Balance(units.size, self.unit_width, self.B, self.NSE,
                         tuple(self.struct_iter(l, 0) for l in range(1, self.L)),
                         split=owner and work >= SERIAL_WORK and units.size > 1)
    inputs = []
    at = 0
    for k, op in enumerate(spec.operands):
      inputs.append(ir.Buffer(f"x{k}", ir.Role.VALUES, at))
      at += op.n_buffers
    for s, (s_lay, at) in enumerate(self.structs):
      for l, lvl in enumerate(s_lay.format.levels):
        for role in lvl.buffers:
          inputs.append(ir.Buffer(ir.buffer_name(role, s, l), ir.Role[role.upper()], at))
          at += 1
    out_size = math.prod(spec.out_shape) if spec.out_kind == DENSE_OUT else \
        math.prod(spec.out_layout.data_shape)
    prologue = ()
    if kp.transpose:
      n0, n1 = self.lay.level_sizes
      prologue = (ir.Transpose(0, n0, n1, self.NSE, ir.buffer_name("pos", 0, 1),
                               ir.buffer_name("crd", 0, 1)),)
    r = self.vector_index() if vec else None
    vector = ir.Vector(ir.Coord(f"f{r}") if r is not None else None,
                       self.size(r) if r is not None else 1, self.lanes) if vec else None
    notes = (("einsum", str(spec)),
             ("driver", f"{self.lay.format!r}, shape {self.lay.shape}, nse {self.NSE}"))
    return ir.Kernel(tuple(inputs), (ir.Buffer("out", ir.Role.OUT, size=out_size),), prologue,
                     outer, vector, balance, np.dtype(kp.dtype).name,
                     np.dtype(self.lay.index_dtype).name, notes)

  def vector_body(self, l) -> list[ir.Stmt]:
    """Level l's statements (l = -1: the unit), with products hoisted to where their
    indices are bound and one accumulator per level below the output's."""
    # further output axes: the leaf writes the output (no accumulator above it)
    out_level = self.D - 1 if self.looped_out() else self.out_level()
    summed = self.leaf_loops()
    factors_at: dict[int, list] = {}
    for k, op in enumerate(self.spec.operands):   # leaf loops: every factor at the leaf
      at = self.D - 1 if summed else max(self.factor_level(op), out_level)
      factors_at.setdefault(at, []).append((k, op))
    r = self.vector_index()

    def over_summed(stmts):
      for i in reversed(summed):
        stmts = [ir.Loop(ir.Range(ir.Coord(f"f{i}"), self.size(i)), ir.Parallel.NONE,
                         tuple(stmts))]
      return stmts

    def term(factors):
      return tuple(self.load(k, op, r in (op.block if op.sparse else op.indices))
                   for k, op in factors)

    def write(factors, acc):
      parts = term(factors) + ((ir.Acc(f"acc{acc}"),) if acc is not None else ())
      race = ir.Race.STORE if self.store_ok() else ir.Race.ACCUMULATE
      return [ir.Accumulate(ir.Access("out", self.out_offset()), ir.Mul(parts), race)]

    def accumulate(into, factors, acc):
      parts = term(factors) + ((ir.Acc(f"acc{acc}"),) if acc is not None else ())
      return [ir.Accumulate(ir.Acc(f"acc{into + 1}"), ir.Mul(parts), ir.Race.ACCUMULATE)]

    def level(l):
      body: list = []
      if l == self.D - 1:
        body += self.leaves()
        body += self.prefetch(l, factors_at.get(l, []), r)
        body += over_summed(write(factors_at.get(l, []), None) if l == out_level else
                            accumulate(l - 1, factors_at.get(l, []), None))
      else:
        if l >= out_level:
          body.append(ir.Zero(f"acc{l + 1}"))
        body += level(l + 1)
        if l == out_level:
          body += write(factors_at.get(l, []), l + 1)
        elif l > out_level:
          body += accumulate(l - 1, factors_at.get(l, []), l + 1)
      return self.wrap(l, body) if l >= 0 else body

    return level(l)

  def dense_bytes(self, op: Operand) -> int:
    return self.itemsize * math.prod(self.size(i) for i in op.indices)

  def prefetch(self, l, factors, r) -> list[ir.Stmt]:
    """Prefetch the dense rows gathered PREFETCH_DISTANCE entries ahead at leaf level l
    (of operands larger than CACHED_BYTES: a smaller one stays in cache)."""
    if l >= self.L:
      return []
    leaf = self.struct_iter(l, 0)
    if r is None or self.size(r) * self.itemsize < _CACHE_LINE or \
        not isinstance(leaf, ir.Segment):
      return []
    ident = self.kp.driver_ids[self.nb + l]
    summed = set(self.leaf_loops())
    targets = tuple((f"x{k}", self.dense_offset(op, {ident: "ahead"}))
                    for k, op in factors
                    if not op.sparse and ident in op.indices and not summed & set(op.indices)
                    and self.dense_bytes(op) > CACHED_BYTES)
    if not targets:
      return []
    return [ir.Prefetch(leaf, PREFETCH_DISTANCE, targets)]

  def scalar_body(self) -> list[ir.Stmt]:
    """Loops over the free output indices at the leaf, a scalar sum of the summed ones."""
    out_free = self.out_free_ids()
    summed = [i for i in self.free if i not in out_free]
    prod = ir.Mul(tuple(self.load(k, op) for k, op in enumerate(self.spec.operands)))
    inner: list = [ir.Accumulate(ir.Acc("s"), prod, ir.Race.ACCUMULATE)]
    for i in reversed(summed):
      inner = [ir.Loop(ir.Range(ir.Coord(f"f{i}"), self.size(i)), ir.Parallel.NONE,
                       tuple(inner))]
    body = [ir.Zero("s")] + inner + [
        ir.Accumulate(ir.Access("out", self.out_offset()), ir.Acc("s"), ir.Race.ACCUMULATE)]
    for i in reversed(out_free):
      body = [ir.Loop(ir.Range(ir.Coord(f"f{i}"), self.size(i)), ir.Parallel.NONE,
                      tuple(body))]
    body = self.leaves() + body
    for l in reversed(range(self.D)):
      body = self.wrap(l, body)
    return body


def _reads_acc(x) -> bool:
  """Whether expression ``x`` reads an accumulator."""
  if isinstance(x, ir.Mul):
    return any(_reads_acc(f) for f in x.factors)
  if isinstance(x, ir.Add):
    return any(_reads_acc(t) for t in x.terms)
  return isinstance(x, ir.Acc)


def join_loops(joins, depth_of: dict, first: int) -> tuple[list, dict] | None:
  """The loops of structures joined, one after the other, inside loops binding indices at
  the depths ``depth_of`` (index id -> depth; -1 for batch dims), or None.

  Each structure's levels are, in storage order: levels whose index is bound already and
  that locate a coordinate (dense), then one level that either binds a new index (a new
  loop) or is co-iterated with an earlier joined loop binding its index (an intersection
  of ordered unique compressed levels at the same level number, e.g. ``A[i,:] . B[k,:]``
  summed over ``j`` in a sampled product), then levels binding new indices.

  Args:
    joins: per structure, ``(ids, levels)``: its index ids and levels in storage order.
    depth_of: the depth of the loop binding each bound index.
    first: the depth of the first joined loop.

  Returns:
    ``(loops, depth_of)``: per joined loop ``(parts, locates)`` — the ``(structure,
    level)`` pairs it iterates together and the ``(structure, level)`` pairs located
    before it (structures numbered from 0 in ``joins`` order) — and the depths of all
    indices bound afterwards.
  """
  depth_of = dict(depth_of)
  loops: list = []

  def merges(lvl):
    return lvl.has_pos and not lvl.full and lvl.ordered and lvl.unique

  for n, (ids, levels) in enumerate(joins):
    located, started = [], False
    for l, (i, lvl) in enumerate(zip(ids, levels)):
      if not started and i in depth_of and lvl.has_locate:
        located.append(l)
        continue
      d = depth_of.get(i, -1) - first
      if not started and d >= 0:        # co-iterated with joined loop d
        parts, locates = loops[d]
        if not merges(lvl) or any(
            m != l or not merges(joins[t][1][m]) for t, m in parts) or \
            any(depth_of[ids[m]] >= first + d for m in located):
          return None
        loops[d] = (parts + ((n, l),), locates + tuple((n, m) for m in located))
        started = True
        continue
      if i in depth_of or lvl.full:     # (a dense level is located, never iterated)
        return None
      depth_of[i] = first + len(loops)
      loops.append((((n, l),), () if started else tuple((n, m) for m in located)))
      started = True
    if not started:
      return None
  return loops, depth_of


def staged(kernel: ir.Kernel, extent: int, tile: int, operands, out) -> ir.Kernel:
  """``kernel`` (planned with its vector index of size ``tile``) run tile by tile over a
  vector index of size ``extent`` (``loopnest.Stage``): ``operands`` holds, per einsum
  operand, the ``(outer, inner)`` view of a staged dense array or None, ``out`` the
  output's (None: an output summed over the tiles; :func:`orient.tiling`). Tiles run
  in parallel unless the work is small."""
  inputs = tuple(ir.Staged(f"x{k}", *v) for k, v in enumerate(operands) if v is not None)
  split = kernel.balance.batch * kernel.balance.nse * extent >= SERIAL_WORK and extent > tile
  output = ir.Staged("out", *out) if out is not None else None
  return dataclasses.replace(kernel, stage=ir.Stage(extent, tile, inputs, output, split))


def owner(kp: KernelPlan) -> bool:
  """Whether ``kp``'s units write disjoint outputs (so they run in parallel)."""
  return _Planner(kp).owner()


def transpose_pays(kp: KernelPlan) -> bool:
  """Whether re-sorting ``kp``'s driver in the prologue (so that its units own their
  outputs and run in parallel) beats the serial loop that accumulates into the output.

  The re-sort is a serial counting sort, then values gathered through its permutation:
  per entry, about what summing a 64-float row costs. It buys the parallel split only,
  so it pays for work that splits (:data:`SERIAL_WORK`) over output rows wider than
  :data:`TRANSPOSE_ROW_BYTES`. ``Aᵀ G`` on R-MAT 131k² (955k entries, 2 cores):
  accumulating 2.6 / 6.2 / 10.5 / 51 ms at widths 8 / 16 / 32 / 64 float32, against
  12.4 / 13.4 / 16.4 / 37 ms transposed; on a uniform 131k² (2M entries) 4.5 / 23 / 43 /
  105 against 39 / 51 / 41 / 62 ms.
  """
  p = _Planner(kp)
  row = math.prod(p.size(i) for i in p.free)
  return row * p.itemsize > TRANSPOSE_ROW_BYTES and p.B * p.NSE * row >= SERIAL_WORK


def lower(kp: KernelPlan, *, always_transpose: bool = False) -> ir.Kernel:
  """The loop nest of ``kp``, transposing the driver in a prologue when that makes the
  outer loop's units owners of their outputs (Scorch's rule) and that pays
  (:func:`transpose_pays`), or always with ``always_transpose`` (for a backend whose
  outer loop must have owners, and for the body of staged tiles, which share one
  re-sort)."""
  if kp.transposable() and not owner(kp) and owner(kp.transposed()) and \
      (always_transpose or transpose_pays(kp)):
    kp = kp.transposed()
  return _Planner(kp).kernel()
