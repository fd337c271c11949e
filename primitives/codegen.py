"""C code generation for einsum plans (TACO-style loop nests over format levels).

A :class:`KernelPlan` is derived from an :class:`EinsumSpec` whose sparse sources
(operands and the sampled output pattern) all share **one** structure — the
*driver*. The generated kernel walks the driver's levels in storage order:

* batch dimensions and level 0 form the outer, parallel loop (units), split into
  chunks of about equal numbers of stored entries (power-law rows);
* a ``dense`` level loops over its size, a ``compressed`` level over
  ``pos[parent] .. pos[parent+1]`` reading ``crd``, a ``singleton`` level reads
  one ``crd`` per parent; coordinates outside the dimension (padding) are skipped,
  and loop bounds are clamped to the level capacity, so no access leaves its buffer;
* dense operands are accessed randomly by strides, sparse values at the leaf.

Two emitters produce the innermost computation:

* **vector mode** (at most one free index, the output's contiguous last axis):
  products are *hoisted* to the level where their indices are bound, and each level
  keeps explicit SIMD accumulators (GCC vector extensions, unaligned loads) —
  ``out[i,:] = Σ_j A_ij X[j,:]`` keeps ``Σ_j`` in registers; MTTKRP accumulates over
  ``k`` before multiplying by ``J[j,:]``; gathered rows are prefetched;
* **scalar mode** (everything else): nested loops over the free indices with a
  scalar accumulator for the summed ones (SDDMM's dot products, MoE).

The output is dense (stored directly when each row is owned by one unit,
accumulated otherwise) or sampled at the driver's leaves.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np

from .c_runtime import RUNTIME
from .einsum_spec import DENSE_OUT, SAMPLED_OUT, EinsumSpec, Operand
from .formats import COMPRESSED, DENSE, SINGLETON
from .layout import Layout

_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_I_TYPES = {np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t"}
VECTOR_BYTES = 32          # AVX2; GCC splits wider-than-native vectors by itself
SERIAL_WORK = 1 << 15      # entries x free size below which one chunk runs serially
PREFETCH_DISTANCE = 16


@dataclasses.dataclass(frozen=True)
class KernelPlan:
  """Everything the generator needs (static, hashable).

  Attributes:
    spec: the einsum.
    driver: the shared structure of all sparse sources.
    driver_ids: index ids of the driver's batch dims then its levels (storage order).
    index_input: flat input position of the driver's first index buffer.
    dtype: value dtype (float32/float64).
    transpose: iterate a CSR-like driver column-major: the kernel first transposes
      its structure (a counting sort into scratch buffers, with a permutation to the
      stored values) because the output is owned by the inner level's index.
    partners: other sparse structures ``(layout, index_input)`` with the driver's
      format and shape but their own patterns: their compressed levels are
      co-iterated with the driver's (a merge that visits only the coordinates
      present in all of them — an intersection).
    structure_of: for each operand, the structure holding it (0 = driver, s = the
      s-th partner, -1 = dense).
    pattern_structure: the structure whose leaves are a sampled output's pattern.
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

  def transposable(self) -> bool:
    """A 2-level (dense, compressed) driver without batch dims can be transposed."""
    lay = self.driver
    return lay.n_batch == 0 and tuple(l.kind for l in lay.format.levels) == (
        DENSE, COMPRESSED) and not self.transpose and not self.partners

  def transposed(self) -> KernelPlan:
    return dataclasses.replace(self, driver_ids=self.driver_ids[::-1], transpose=True)

  @property
  def name(self) -> str:
    digest = hashlib.sha256(repr(self).encode()).hexdigest()[:16]
    return f"jscorch_k_{digest}"


class _Emitter:
  """Accumulates indented C lines."""

  def __init__(self):
    self.lines: list[str] = []
    self.depth = 0

  def __call__(self, line: str = ""):
    self.lines.append("  " * self.depth + line if line else "")

  def open(self, line: str):
    self(line)
    self.depth += 1

  def close(self, line: str = "}"):
    self.depth -= 1
    self(line)

  def text(self) -> str:
    return "\n".join(self.lines)


def _strides(shape):
  out, acc = [], 1
  for s in reversed(shape):
    out.append(acc)
    acc *= s
  return tuple(reversed(out))


class _Generator:
  """Emits the C source of one :class:`KernelPlan`."""

  def __init__(self, kp: KernelPlan):
    self.kp = kp
    self.spec = spec = kp.spec
    self.lay = lay = kp.driver
    self.T = _C_TYPES[kp.dtype]
    self.I = _I_TYPES[np.dtype(lay.index_dtype)]
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
    self.structs = [(lay, kp.index_input)] + list(kp.partners)
    # Co-iterating a compressed first level is one merge per batch element (one unit).
    self.unit_width = 1 if self.S > 1 and self.levels[0].kind != DENSE else self.caps[0]
    # coordinate variable of each bound id (first occurrence), and duplicates to check
    self.coord_var: dict[int, str] = {}
    self.level_of: dict[int, int] = {}
    for d, i in enumerate(kp.driver_ids[:self.nb]):
      self.coord_var.setdefault(i, f"b{d}")
      self.level_of.setdefault(i, -1)
    for l, i in enumerate(kp.driver_ids[self.nb:]):
      if i not in self.coord_var:
        self.coord_var[i] = f"c{l}"
        self.level_of[i] = l
    self.bound = set(self.coord_var)
    self.free = [i for i in dict.fromkeys(
        [i for op in spec.operands for i in op.indices] + list(self.out_free_ids()))
        if i not in self.bound]

  # -- helpers -------------------------------------------------------------------------
  def leaf_expr(self, l) -> str:
    if self.kp.transpose:
      return f"const int64_t leaf = a->perm[p{l}];"
    lines = [f"const int64_t leaf = b * {self.NSE} + p{l};"]
    for s in range(1, self.S):
      lines.append(f"const int64_t leaf_{s} = b * {self.structs[s][0].nse} + p{l}_{s};")
    return " ".join(lines)

  def structure(self, k) -> int:
    """The structure holding operand k's pattern (k = None: the sampled output)."""
    if k is None:
      return self.kp.pattern_structure
    return self.kp.structure_of[k] if self.kp.structure_of else 0

  def out_free_ids(self):
    if self.spec.out_kind == DENSE_OUT:
      return [i for i in self.spec.out if i not in self.coord_var]
    return list(self.spec.out_operand.block)

  def size(self, i):
    return self.spec.size(i)

  def coord(self, i, free_var=lambda i: f"f{i}", override=None):
    if override and i in override:
      return override[i]
    return self.coord_var[i] if i in self.coord_var else free_var(i)

  def dense_offset(self, op: Operand, free_var=lambda i: f"f{i}", override=None):
    shape = tuple(self.size(i) for i in op.indices)
    terms = [f"{self.coord(i, free_var, override)} * {s}"
             for i, s in zip(op.indices, _strides(shape))]
    return " + ".join(terms) if terms else "0"

  def value_offset(self, op: Operand, free_var=lambda i: f"f{i}", k=None):
    block = op.block
    blk = math.prod(self.size(i) for i in block)
    s = self.structure(k)
    terms = [f"(leaf{'_%d' % s if s else ''} * {blk})"] + [f"{self.coord(i, free_var)} * {s}" for i, s in
                                     zip(block, _strides(tuple(self.size(i) for i in block)))]
    return " + ".join(terms)

  def out_offset(self, free_var=lambda i: f"f{i}"):
    if self.spec.out_kind == DENSE_OUT:
      return self.dense_offset(Operand(self.spec.out), free_var)
    return self.value_offset(self.spec.out_operand, free_var, k=None)

  def factor_level(self, op: Operand) -> int:
    ids = op.indices if not op.sparse else op.bound
    if op.sparse:
      return self.L - 1
    return max([self.level_of[i] for i in ids if i in self.level_of], default=-1)

  # -- ownership: may units run in parallel, may rows be stored directly ---------------
  def out_level(self) -> int:
    if self.spec.out_kind == SAMPLED_OUT:
      return self.L - 1
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
    if self.spec.out_kind != DENSE_OUT or not self.owner() or self.levels[0].kind != DENSE:
      return False
    bound_out = [i for i in self.spec.out if i in self.coord_var]
    expected = list(self.kp.driver_ids[:self.nb]) + [self.kp.driver_ids[self.nb]]
    return sorted(bound_out) == sorted(expected) and len(set(expected)) == len(expected) \
        and self.out_level() == 0 and self.vector_mode()

  def vector_mode(self) -> bool:
    out_free = self.out_free_ids()
    if self.spec.out_kind != DENSE_OUT or len(self.free) > 1:
      return False
    if not self.free:
      return True
    r = self.free[0]
    if out_free != [r] or self.spec.out[-1] != r:
      return False
    for op in self.spec.operands:
      ids = op.block if op.sparse else op.indices
      if r in ids and ids[-1] != r:
        return False
      if op.sparse and any(i != r for i in op.block):
        return False
    return True

  # -- the source --------------------------------------------------------------------------
  def source(self) -> str:
    e = _Emitter()
    spec, kp = self.spec, self.kp
    e(f"/* jscorch generated kernel {kp.name}")
    e(f" *   einsum  : {spec}")
    e(f" *   driver  : {self.lay.format!r}, shape {self.lay.shape}, nse {self.NSE}")
    e(f" *   mode    : {'vector' if self.vector_mode() else 'scalar'}, "
      f"{'parallel' if self.owner() else 'serial'}, "
      f"{'store' if self.store_ok() else 'accumulate'} */")
    e(RUNTIME)
    e(f"typedef {self.T} T;")
    e(f"typedef {self.I} I;")
    vb = VECTOR_BYTES
    e(f"typedef T vT __attribute__((vector_size({vb}), aligned(sizeof(T))));")
    e(f"enum {{ VL = {vb} / sizeof(T) }};")
    e()
    self.emit_args(e)
    self.emit_work_before(e)
    self.emit_body(e)
    self.emit_handler(e)
    return e.text() + "\n"

  def emit_args(self, e):
    e.open("typedef struct {")
    for k, op in enumerate(self.spec.operands):
      e(f"const T* x{k};")
    for s in range(self.S):
      for l, lvl in enumerate(self.levels):
        if lvl.kind == COMPRESSED:
          e(f"const I* pos{l}{self.sfx(s)};")
        if lvl.kind != DENSE:
          e(f"const I* crd{l}{self.sfx(s)};")
    e("const I* perm;")
    e("T* out;")
    e.close("} args_t;")
    e()

  @staticmethod
  def sfx(s) -> str:
    return f"_{s}" if s else ""

  def units(self) -> int:
    return self.B * self.unit_width

  def emit_work_before(self, e):
    """Leaves before unit u (monotone): the balance key of the parallel split."""
    e.open("static int64_t work_before(const void* a_, int64_t u) {")
    e("const args_t* a = (const args_t*)a_;")
    e(f"if (u >= {self.units()}) return {self.B * self.NSE};")
    e(f"const int64_t b = u / {self.unit_width}, q = u % {self.unit_width};")
    if self.unit_width == 1:
      e("(void)q;")
      e(f"return b * {self.NSE};")
      e.close()
      e()
      return
    e("int64_t p = q;")
    for l in range(1, self.L):
      lvl, pc, cap = self.levels[l], self.caps[l - 1], self.caps[l]
      if lvl.kind == COMPRESSED:
        e(f"p = a->pos{l}[b * {pc + 1} + p]; if (p > {cap}) p = {cap};")
      elif lvl.kind == DENSE:
        e(f"p = p * {self.sizes[l]};")
    e(f"return b * {self.NSE} + p;")
    e.close()
    e()

  def emit_body(self, e):
    e.open("static void body(const void* a_, int64_t lo, int64_t hi) {")
    e("const args_t* a = (const args_t*)a_;")
    e("T* restrict out = a->out;")
    e.open("for (int64_t u = lo; u < hi; ++u) {")
    e(f"const int64_t b = u / {self.unit_width}, q = u % {self.unit_width};")
    stride = 1
    for d in reversed(range(self.nb)):
      size = self.lay.batch_shape[d]
      e(f"const int64_t b{d} = (b / {stride}) % {size};")
      stride *= size
    self.check_batch_duplicates(e)
    vec = self.vector_mode()
    if vec:
      VectorEmitter(self, e).emit()
    else:
      ScalarEmitter(self, e).emit()
    e.close()
    e.close()
    e()

  def check_batch_duplicates(self, e):
    for d, i in enumerate(self.kp.driver_ids[:self.nb]):
      if self.coord_var[i] != f"b{d}":
        e(f"if (b{d} != {self.coord_var[i]}) continue;")

  def open_level(self, e, l):
    """Opens the loop (or block) of level l; binds p{l} and c{l}; skips padding."""
    if self.S > 1:
      return self.open_merged_level(e, l)
    lvl, size, cap = self.levels[l], self.sizes[l], self.caps[l]
    pc = self.caps[l - 1] if l else 1
    parent = f"p{l - 1}" if l else "0"
    if l == 0 and lvl.kind == DENSE:
      e.open("{")
      e("const int64_t p0 = q, c0 = q;")
    elif l == 0:
      e.open(f"if (q < (int64_t)a->pos0[b * 2 + 1]) {{")
      e("const int64_t p0 = q, c0 = a->crd0[b * %d + p0];" % cap)
      e(f"if ((uint64_t)c0 >= {size}) continue;")
    elif lvl.kind == DENSE:
      e.open(f"for (int64_t c{l} = 0; c{l} < {size}; ++c{l}) {{")
      e(f"const int64_t p{l} = {parent} * {size} + c{l};")
    elif lvl.kind == COMPRESSED:
      e(f"int64_t hi{l} = a->pos{l}[b * {pc + 1} + {parent} + 1]; if (hi{l} > {cap}) hi{l} = {cap};")
      e.open(f"for (int64_t p{l} = a->pos{l}[b * {pc + 1} + {parent}]; p{l} < hi{l}; ++p{l}) {{")
      e(f"const int64_t c{l} = a->crd{l}[b * {cap} + p{l}];")
      e(f"if ((uint64_t)c{l} >= {size}) continue;")
    else:
      assert lvl.kind == SINGLETON
      e.open("{")
      e(f"const int64_t p{l} = {parent}, c{l} = a->crd{l}[b * {cap} + p{l}];")
      e(f"if ((uint64_t)c{l} >= {size}) continue;")
    ident = self.kp.driver_ids[self.nb + l]
    if self.coord_var[ident] != f"c{l}":
      e(f"if (c{l} != {self.coord_var[ident]}) continue;")

  def close_level(self, e, l):
    if self.S == 1 or self.levels[l].kind == DENSE:
      e.close()
      return
    e.close("} while (0);")
    e(" ".join(f"++q{l}{self.sfx(s)};" for s in range(self.S)))
    e.depth -= 1
    e.open("} else {")
    for s in range(self.S):
      e(f"if (k{l}_{s} < c{l}) ++q{l}{self.sfx(s)};")
    e.close()
    e.close()

  def open_merged_level(self, e, l):
    """Level l of several structures in lockstep: a shared dense loop, or a merge of
    their compressed segments that stops only at coordinates present in all."""
    lvl, size = self.levels[l], self.sizes[l]
    structs = range(self.S)
    if lvl.kind == DENSE:
      if l == 0:
        e.open("{")
        e("const int64_t c0 = q;")
        for s in structs:
          e(f"const int64_t p0{self.sfx(s)} = q;")
      else:
        e.open(f"for (int64_t c{l} = 0; c{l} < {size}; ++c{l}) {{")
        for s in structs:
          e(f"const int64_t p{l}{self.sfx(s)} = p{l - 1}{self.sfx(s)} * {size} + c{l};")
      return
    for s in structs:
      lay = self.structs[s][0]
      caps = lay.capacities
      cap, pc = caps[l], (caps[l - 1] if l else 1)
      parent = f"p{l - 1}{self.sfx(s)}" if l else "0"
      x = self.sfx(s)
      e(f"int64_t q{l}{x} = a->pos{l}{x}[b * {pc + 1} + {parent}];")
      e(f"int64_t hi{l}{x} = a->pos{l}{x}[b * {pc + 1} + {parent} + 1]; "
        f"if (hi{l}{x} > {cap}) hi{l}{x} = {cap};")
    e.open("while (" + " && ".join(f"q{l}{self.sfx(s)} < hi{l}{self.sfx(s)}"
                                   for s in structs) + ") {")
    for s in structs:
      cap = self.structs[s][0].capacities[l]
      e(f"const int64_t k{l}_{s} = a->crd{l}{self.sfx(s)}[b * {cap} + q{l}{self.sfx(s)}];")
    e(f"int64_t c{l} = k{l}_0;")
    for s in range(1, self.S):
      e(f"if (k{l}_{s} > c{l}) c{l} = k{l}_{s};")
    e.open("if (" + " && ".join(f"k{l}_{s} == c{l}" for s in structs) + ") {")
    e(f"if ((uint64_t)c{l} >= {size}) break;")
    e(" ".join(f"const int64_t p{l}{self.sfx(s)} = q{l}{self.sfx(s)};" for s in structs))
    e.open("do {")

  def emit_transpose_prologue(self, e):
    """Counting sort of a (dense, compressed) structure into column-major scratch."""
    n0, n1 = self.lay.level_sizes
    nse = self.NSE
    e(f"I* tpos = (I*)calloc({n1 + 1}, sizeof(I));")
    e(f"I* tcrd = (I*)malloc(sizeof(I) * {max(nse, 1)});")
    e(f"I* tperm = (I*)malloc(sizeof(I) * {max(nse, 1)});")
    e(f"I* next = (I*)malloc(sizeof(I) * {max(n1, 1)});")
    e("if (!tpos || !tcrd || !tperm || !next) { free(tpos); free(tcrd); free(tperm); free(next); "
      "return jscorch_error(cf, \"jscorch kernel: out of memory for the transposed structure\"); }")
    e("const I* pos = (const I*)a.pos1;")
    e("const I* crd = (const I*)a.crd1;")
    e.open(f"for (int64_t i = 0; i < {n0}; ++i) {{")
    e(f"int64_t hi = pos[i + 1]; if (hi > {nse}) hi = {nse};")
    e(f"for (int64_t p = pos[i]; p < hi; ++p) if ((uint64_t)crd[p] < {n1}) ++tpos[crd[p] + 1];")
    e.close()
    e(f"for (int64_t j = 0; j < {n1}; ++j) {{ tpos[j + 1] += tpos[j]; next[j] = tpos[j]; }}")
    e.open(f"for (int64_t i = 0; i < {n0}; ++i) {{")
    e(f"int64_t hi = pos[i + 1]; if (hi > {nse}) hi = {nse};")
    e.open("for (int64_t p = pos[i]; p < hi; ++p) {")
    e("const int64_t c = crd[p];")
    e(f"if ((uint64_t)c >= {n1}) continue;")
    e("const int64_t q = next[c]++;")
    e("tcrd[q] = (I)i; tperm[q] = (I)p;")
    e.close()
    e.close()
    e("free(next);")
    e("a.pos1 = tpos; a.crd1 = tcrd; a.perm = tperm;")

  def emit_handler(self, e):
    kp = self.kp
    e(f"XLA_FFI_Error* {kp.name}(XLA_FFI_CallFrame* cf) {{")
    e.depth += 1
    e("XLA_FFI_Error* early;")
    e("if (jscorch_preamble(cf, &early)) return early;")
    e("args_t a;")
    at = 0
    for k, op in enumerate(self.spec.operands):
      e(f"a.x{k} = (const T*)jscorch_arg(cf, {at});")
      at += op.n_buffers
    for s, (_, at) in enumerate(self.structs):
      for l, lvl in enumerate(self.levels):
        if lvl.kind == COMPRESSED:
          e(f"a.pos{l}{self.sfx(s)} = (const I*)jscorch_arg(cf, {at});")
          at += 1
        if lvl.kind != DENSE:
          e(f"a.crd{l}{self.sfx(s)} = (const I*)jscorch_arg(cf, {at});")
          at += 1
    e("a.out = (T*)jscorch_ret(cf, 0);")
    if kp.transpose:
      self.emit_transpose_prologue(e)
    out_size = math.prod(self.spec.out_shape) if self.spec.out_kind == DENSE_OUT else \
        math.prod(self.spec.out_layout.data_shape)
    if not self.store_ok():
      e(f"memset(a.out, 0, sizeof(T) * (size_t){out_size});")
    free_size = math.prod(self.size(i) for i in self.free)
    work = self.B * self.NSE * max(free_size, 1)
    if self.owner() and work >= SERIAL_WORK and self.units() > 1:
      e("int64_t n_chunks = 4 * jscorch_num_threads(cf);")
      e("if (n_chunks > 256) n_chunks = 256;")
      e("int64_t bounds[257];")
      e(f"n_chunks = jscorch_split({self.units()}, work_before, &a, n_chunks, bounds);")
      e("jscorch_parallel_for(cf, body, &a, bounds, n_chunks);")
    else:
      e(f"body(&a, 0, {self.units()});")
    if kp.transpose:
      e("free(tpos); free(tcrd); free(tperm);")
    e("return NULL;")
    e.depth -= 1
    e("}")


class VectorEmitter:
  """Hoisted products with explicit SIMD accumulators over the one free index."""

  def __init__(self, g: _Generator, e: _Emitter):
    self.g, self.e = g, e
    self.r = g.free[0] if g.free else None
    self.R = g.size(self.r) if self.r is not None else 1
    self.nv = self.R // (32 // np.dtype(g.kp.dtype).itemsize) if self.r is not None else 0
    self.vl = 32 // np.dtype(g.kp.dtype).itemsize
    self.tail = self.R - self.nv * self.vl
    self.out_level = g.out_level()
    self.factors_at: dict[int, list[tuple[int, Operand]]] = {}
    for k, op in enumerate(g.spec.operands):
      lev = max(g.factor_level(op), self.out_level)
      self.factors_at.setdefault(lev, []).append((k, op))

  def lanes(self):
    """(name suffix, element offset, is_vector) for each accumulator lane group."""
    out = [(f"v{v}", v * self.vl, True) for v in range(self.nv)]
    out += [(f"s{t}", self.nv * self.vl + t, False) for t in range(self.tail)]
    return out

  def term(self, factors, offset, vector):
    """C expression of the product of factors at element offset (vector or scalar)."""
    parts = []
    for k, op in factors:
      has_r = self.r in (op.block if op.sparse else op.indices)
      base = self.g.value_offset(op, lambda i: "0", k) if op.sparse else \
          self.g.dense_offset(op, lambda i: "0")
      if has_r:
        addr = f"a->x{k} + ({base}) + {offset}"
        parts.append(f"*(const vT*)({addr})" if vector else f"({addr})[0]")
      else:
        parts.append(f"a->x{k}[{base}]")
    return parts

  def emit(self):
    self.emit_level(-1)

  def declare(self, level):
    for name, _, vec in self.lanes():
      e = self.e
      e(f"{'vT' if vec else 'T'} acc{level + 1}_{name} = {{0}};" if vec else
        f"T acc{level + 1}_{name} = 0;")

  def emit_level(self, l):
    """Emits level l's body (l = -1: the unit), recursing into deeper levels."""
    g, e = self.g, self.e
    if l >= 0:
      g.open_level(e, l)
    if l == g.L - 1:
      e(g.leaf_expr(l))
      self.emit_prefetch(l)
      if l == self.out_level:
        self.write_out(self.factors_at.get(l, []))
      else:
        self.accumulate(l - 1, self.factors_at.get(l, []), None)
    else:
      if l >= self.out_level:
        self.declare(l)
      self.emit_level(l + 1)
      if l == self.out_level:
        self.write_out(self.factors_at.get(l, []), acc=l + 1)
      elif l > self.out_level:
        self.accumulate(l - 1, self.factors_at.get(l, []), acc=l + 1)
    if l >= 0:
      g.close_level(e, l)

  def accumulate(self, into, factors, acc):
    """acc{into+1} += prod(factors) * (acc{acc} | leaf values)."""
    e = self.e
    for name, off, vec in self.lanes():
      parts = self.term(factors, off, vec)
      if acc is not None:
        parts.append(f"acc{acc}_{name}")
      e(f"acc{into + 1}_{name} += {' * '.join(parts) if parts else '1'};")

  def write_out(self, factors, acc=None):
    g, e = self.g, self.e
    op = "=" if g.store_ok() else "+="
    base = g.out_offset(lambda i: "0")
    for name, off, vec in self.lanes():
      parts = self.term(factors, off, vec)
      if acc is not None:
        parts.append(f"acc{acc}_{name}")
      expr = " * ".join(parts) if parts else "1"
      if vec:
        e(f"*(vT*)(out + {base} + {off}) {op} {expr};")
      else:
        e(f"out[{base} + {off}] {op} {expr};")

  def emit_prefetch(self, l):
    """Prefetches the dense rows gathered PREFETCH_DISTANCE entries ahead at leaf level l."""
    g, e = self.g, self.e
    if self.r is None or self.R * np.dtype(g.kp.dtype).itemsize < 64 or \
        g.levels[l].kind != COMPRESSED:
      return
    ident = g.kp.driver_ids[g.nb + l]
    targets = [(k, op) for k, op in self.factors_at.get(l, []) if not op.sparse
               and ident in op.indices]
    if not targets:
      return
    d = PREFETCH_DISTANCE
    e.open(f"if (p{l} + {d} < hi{l}) {{")
    e(f"const int64_t ahead = a->crd{l}[b * {g.caps[l]} + p{l} + {d}];")
    for k, op in targets:
      off = g.dense_offset(op, lambda i: "0", {ident: "ahead"})
      e(f"__builtin_prefetch(a->x{k} + {off});")
    e.close()


class ScalarEmitter:
  """Nested loops over free indices at the leaf; scalar accumulation of summed ones."""

  def __init__(self, g: _Generator, e: _Emitter):
    self.g, self.e = g, e

  def emit(self):
    g, e = self.g, self.e
    for l in range(g.L):
      g.open_level(e, l)
    e(g.leaf_expr(g.L - 1))
    out_free = g.out_free_ids()
    summed = [i for i in g.free if i not in out_free]
    for i in out_free:
      e.open(f"for (int64_t f{i} = 0; f{i} < {g.size(i)}; ++f{i}) {{")
    e("T s = 0;")
    for i in summed:
      e.open(f"for (int64_t f{i} = 0; f{i} < {g.size(i)}; ++f{i}) {{")
    parts = []
    for k, op in enumerate(g.spec.operands):
      off = g.value_offset(op, k=k) if op.sparse else g.dense_offset(op)
      parts.append(f"a->x{k}[{off}]")
    e(f"s += {' * '.join(parts) if parts else '1'};")
    for _ in summed:
      e.close()
    e(f"out[{g.out_offset()}] += s;")
    for _ in out_free:
      e.close()
    for l in reversed(range(g.L)):
      g.close_level(e, l)


def owner(kp: KernelPlan) -> bool:
  """Whether ``kp``'s units write disjoint outputs (so they run in parallel)."""
  return _Generator(kp).owner()


def generate(kp: KernelPlan) -> str:
  """The C source of the kernel for ``kp``."""
  return _Generator(kp).source()
