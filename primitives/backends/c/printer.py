"""The C backend's printer: a :class:`~jscorch.primitives.loopnest.Kernel` as C source.

The printer decides nothing; it visits the IR the planner (:mod:`jscorch.primitives.plan`) wrote:

* the outer :class:`Loop` over :class:`Units` becomes ``body(a, lo, hi)``, run by
  ``jscorch_parallel_for`` over chunks balanced by ``work_before`` (stored entries
  before a unit) when the loop is ``Parallel.OUTER`` and its balance says split,
  else serially;
* each iterator prints its own loop: :class:`Range` ``for c``, :class:`Segment`
  ``for p in pos[p'] .. pos[p'+1]`` (bounds clamped to the capacity, padding
  coordinates skipped), :class:`Single` one ``crd``, :class:`Intersect` a merge of
  sorted segments that stops only where all coordinates agree, :class:`TupleIntersect`
  a lexicographic merge of ordered COO structures visiting every pair of equal tuples;
* in a vector kernel every :class:`Zero` / :class:`Accumulate` / lane-varying
  :class:`Load` prints once per lane group: GCC vector extensions (``vT``,
  unaligned loads) for full vectors, scalars for the tail;
* :class:`Race` ``STORE`` writes ``=`` into an unzeroed output, ``ACCUMULATE``
  ``+=`` after a ``memset``;
* a segment's loop with ``interleave`` > 1 runs two (or more) entries per iteration,
  each into its own copy of the accumulators (``acc1_w1_v0``...), added up after the
  loop; each entry's body sits in a ``do { } while (0)`` that ``continue`` leaves.

The kernel is one FFI handler named :attr:`Kernel.name`, with a readable header
comment giving the expression, formats and mode.

Example:
  >>> import numpy as np
  >>> from jscorch.primitives.layout import Layout
  >>> from jscorch.primitives.formats import CSR
  >>> from jscorch.primitives.einsum_spec import EinsumSpec, Operand
  >>> from jscorch.primitives.plan import KernelPlan, lower
  >>> lay = Layout(CSR, (6, 7), 20)
  >>> spec = EinsumSpec((Operand((0, 1), lay), Operand((1, 2))), out=(0, 2),
  ...                   sizes=((0, 6), (1, 7), (2, 16)))
  >>> src = generate(lower(KernelPlan(spec, lay, (0, 1), 1, np.dtype(np.float32))))
  >>> src.splitlines()[3]
  ' *   mode    : vector, parallel, store */'
"""
from __future__ import annotations

from ... import loopnest as ir
from ...c_runtime import RUNTIME
from ...plan import VECTOR_BYTES

C_TYPES = {"float32": "float", "float64": "double"}
ITEMSIZES = {"float32": 4, "float64": 8}
I_TYPES = {"int32": "int32_t", "int64": "int64_t"}


class _Lines:
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


def _sfx(s) -> str:
  return f"_{s}" if s else ""


def _plus(offset: str, at: int) -> str:
  """``offset + at`` (a lane's element offset), without a ``+ 0`` or a lone ``0 +``."""
  if at == 0:
    return offset
  return str(at) if offset == "0" else f"{offset} + {at}"


def _pos(src, level) -> str:
  return f"p{level}{_sfx(src)}" if level >= 0 else "0"


class _Printer:
  """Prints one kernel."""

  def __init__(self, k: ir.Kernel):
    self.k = k
    self.e = _Lines()
    vec = k.vector
    self.vcoord = vec.coord.name if vec and vec.coord else None
    if vec:
      nv = vec.size // vec.width if vec.coord else 0
      tail = vec.size - nv * vec.width
      self.lanes = [(f"v{v}", v * vec.width, True) for v in range(nv)] + \
          [(f"s{t}", nv * vec.width + t, False) for t in range(tail)]
    else:
      self.lanes = []
    self.acc_names = {}        # accumulators renamed in one copy of an interleaved loop

  # -- expressions --------------------------------------------------------------------------
  def expr(self, x, lane=None) -> str:
    if isinstance(x, ir.Const):
      return str(x.value)
    if isinstance(x, ir.Var):
      return x.name
    if isinstance(x, ir.Coord):
      return "0" if x.name == self.vcoord else x.name
    if isinstance(x, ir.Pos):
      return _pos(x.src, x.level)
    if isinstance(x, ir.Acc):
      name = self.acc_names.get(x.name, x.name)
      return f"{name}_{lane[0]}" if lane else name
    if isinstance(x, ir.Affine):     # simplified once: no 0 terms, no unit factors
      terms = [(self.expr(e), c) for e, c in x.terms]
      terms = [t if c == 1 else f"{t} * {c}" for t, c in terms if t != "0" and c != 0]
      return " + ".join(terms) if terms else "0"
    if isinstance(x, ir.Load):
      off = self.expr(x.offset)
      if x.lanes and lane:
        _, at, vector = lane
        addr = f"a->{x.buffer} + {_plus(off, at)}"
        return f"*(const vT*)({addr})" if vector else f"({addr})[0]"
      return f"a->{x.buffer}[{off}]"
    if isinstance(x, ir.Mul):
      return " * ".join(self.expr(f, lane) for f in x.factors) or "1"
    if isinstance(x, ir.Add):
      return " + ".join(self.expr(t, lane) for t in x.terms)
    raise TypeError(f"C printer: not an expression; got {x!r}")

  # -- statements ---------------------------------------------------------------------------
  def stmt(self, s):
    e = self.e
    if isinstance(s, ir.Loop) and s.interleave > 1:
      self.interleaved(s)
    elif isinstance(s, ir.Loop):
      self.open(s.over)
      for b in s.body:
        self.stmt(b)
      self.close(s.over)
    elif isinstance(s, ir.Let):
      e(f"const int64_t {s.name} = {self.expr(s.value)};")
    elif isinstance(s, ir.Locate):
      e(f"const int64_t {_pos(s.src, s.level)} = {self.expr(s.value)};")
    elif isinstance(s, ir.Zero):
      self.zero(s.name)
    elif isinstance(s, ir.Accumulate):
      self.accumulate(s)
    elif isinstance(s, ir.SkipUnless):
      e(f"if ({self.expr(s.a)} != {self.expr(s.b)}) continue;")
    elif isinstance(s, ir.Prefetch):
      seg, d = s.segment, s.distance
      p = _pos(seg.src, seg.level)
      e.open(f"if ({p} + {d} < hi{seg.level}{_sfx(seg.src)}) {{")
      e(f"const int64_t ahead = a->{seg.crd}[b * {seg.cap} + {p} + {d}];")
      for buf, off in s.targets:
        e(f"__builtin_prefetch(a->{buf} + {self.expr(off)});")
      e.close()
    else:
      raise TypeError(f"C printer: not a statement; got {s!r}")

  def accumulate(self, s: ir.Accumulate):
    e = self.e
    op = "=" if s.race is ir.Race.STORE else "+="
    if not self.k.vector:
      target = self.expr(s.out) if isinstance(s.out, ir.Acc) else \
          f"{s.out.buffer}[{self.expr(s.out.offset)}]"
      e(f"{target} {op} {self.expr(s.value)};")
      return
    for lane in self.lanes:
      name, at, vector = lane
      value = self.expr(s.value, lane)
      if isinstance(s.out, ir.Acc):
        e(f"{self.acc_names.get(s.out.name, s.out.name)}_{name} {op} {value};")
      elif vector:
        e(f"*(vT*)({s.out.buffer} + {_plus(self.expr(s.out.offset), at)}) {op} {value};")
      else:
        e(f"{s.out.buffer}[{_plus(self.expr(s.out.offset), at)}] {op} {value};")

  def zero(self, name: str):
    e = self.e
    if not self.k.vector:
      e(f"T {name} = 0;")
    for lane, _, vector in self.lanes:
      e(f"vT {name}_{lane} = {{0}};" if vector else f"T {name}_{lane} = 0;")

  def interleaved(self, loop: ir.Loop):
    """A segment's loop whose consecutive entries go to ``loop.interleave`` sets of
    accumulators (``acc``, ``acc_w1``, ...), each entry's body in a ``do { } while (0)``
    that ``continue`` leaves; the sets are added to the first after the loop."""
    e, it, ways = self.e, loop.over, loop.interleave
    accs = sorted({s.out.name for s in loop.body if isinstance(s, ir.Accumulate)})
    for w in range(1, ways):
      for name in accs:
        self.zero(f"{name}_w{w}")
    lo, hi = self.segment_bounds(it)
    u = f"u{it.level}{_sfx(it.src)}"
    e(f"int64_t {u} = {lo};")
    e.open(f"for (; {u} + {ways - 1} < {hi}; {u} += {ways}) {{")
    for w in range(ways):
      self.acc_names = {name: f"{name}_w{w}" for name in accs} if w else {}
      self.segment_entry(loop, f"{u} + {w}" if w else u)
    self.acc_names = {}
    e.close()
    e.open(f"for (; {u} < {hi}; ++{u}) {{")
    self.segment_entry(loop, u)
    e.close()
    for w in range(1, ways):
      for name in accs:
        if not self.k.vector:
          e(f"{name} += {name}_w{w};")
        for lane, _, _ in self.lanes:
          e(f"{name}_{lane} += {name}_w{w}_{lane};")

  def segment_bounds(self, it: ir.Segment) -> tuple[str, str]:
    """Declares the segment's end ``hi`` (clamped to the capacity); returns the C
    expressions of its first position and of ``hi``."""
    l = it.level
    at = f"b * {it.parent_cap + 1} + {_pos(it.src, l - 1)}"
    hi = f"hi{l}{_sfx(it.src)}"
    self.e(f"int64_t {hi} = a->{it.pos}[{at} + 1]; if ({hi} > {it.cap}) {hi} = {it.cap};")
    return f"a->{it.pos}[{at}]", hi

  def segment_entry(self, loop: ir.Loop, position: str):
    """The body of ``loop`` (over a segment) for its entry at ``position``."""
    e, it = self.e, loop.over
    c, p = it.coord.name, _pos(it.src, it.level)
    e.open("do {")
    e(f"const int64_t {p} = {position}, {c} = a->{it.crd}[b * {it.cap} + {p}];")
    e(f"if ((uint64_t){c} >= {it.size}) continue;")
    for s in loop.body:
      self.stmt(s)
    e.close("} while (0);")

  # -- iterators ----------------------------------------------------------------------------
  def open(self, it):
    e = self.e
    if isinstance(it, ir.Range):
      c, l, n = it.coord.name, it.level, it.size
      if not it.srcs:                                  # a free index
        e.open(f"for (int64_t {c} = 0; {c} < {n}; ++{c}) {{")
      elif it.unit and len(it.srcs) == 1:
        e.open("{")
        e(f"const int64_t {_pos(it.srcs[0], l)} = q, {c} = q;")
      elif it.unit:
        e.open("{")
        e(f"const int64_t {c} = q;")
        for s in it.srcs:
          e(f"const int64_t {_pos(s, l)} = q;")
      else:
        e.open(f"for (int64_t {c} = 0; {c} < {n}; ++{c}) {{")
        for s in it.srcs:
          e(f"const int64_t {_pos(s, l)} = {_pos(s, l - 1)} * {n} + {c};")
    elif isinstance(it, ir.Segment):
      c, p = it.coord.name, _pos(it.src, it.level)
      if it.unit:
        e.open(f"if (q < (int64_t)a->{it.pos}[b * {it.parent_cap + 1} + 1]) {{")
        e(f"const int64_t {p} = q, {c} = a->{it.crd}[b * {it.cap} + {p}];")
      else:
        lo, hi = self.segment_bounds(it)
        e.open(f"for (int64_t {p} = {lo}; {p} < {hi}; ++{p}) {{")
        e(f"const int64_t {c} = a->{it.crd}[b * {it.cap} + {p}];")
      e(f"if ((uint64_t){c} >= {it.size}) continue;")
    elif isinstance(it, ir.Single):
      c, l, p = it.coord.name, it.level, _pos(it.src, it.level)
      e.open("{")
      e(f"const int64_t {p} = {_pos(it.src, l - 1)}, {c} = a->{it.crd}[b * {it.cap} + {p}];")
      e(f"if ((uint64_t){c} >= {it.size}) continue;")
    elif isinstance(it, ir.Intersect):
      self.open_intersect(it)
    elif isinstance(it, ir.TupleIntersect):
      self.open_tuple_intersect(it)
    else:
      raise NotImplementedError(f"C printer: no loop for the iterator {type(it).__name__}")

  def open_intersect(self, it: ir.Intersect):
    e, c = self.e, it.coord.name
    l = it.parts[0].level
    for seg in it.parts:
      x = _sfx(seg.src)
      at = f"b * {seg.parent_cap + 1} + {_pos(seg.src, l - 1)}"
      e(f"int64_t q{l}{x} = a->{seg.pos}[{at}];")
      e(f"int64_t hi{l}{x} = a->{seg.pos}[{at} + 1]; "
        f"if (hi{l}{x} > {seg.cap}) hi{l}{x} = {seg.cap};")
    e.open("while (" + " && ".join(f"q{l}{_sfx(s.src)} < hi{l}{_sfx(s.src)}" for s in it.parts)
           + ") {")
    for seg in it.parts:
      e(f"const int64_t k{l}_{seg.src} = a->{seg.crd}[b * {seg.cap} + q{l}{_sfx(seg.src)}];")
    e(f"int64_t {c} = k{l}_{it.parts[0].src};")
    for seg in it.parts[1:]:
      e(f"if (k{l}_{seg.src} > {c}) {c} = k{l}_{seg.src};")
    e.open("if (" + " && ".join(f"k{l}_{s.src} == {c}" for s in it.parts) + ") {")
    e(f"if ((uint64_t){c} >= {it.parts[0].size}) break;")
    e(" ".join(f"const int64_t {_pos(s.src, l)} = q{l}{_sfx(s.src)};" for s in it.parts))
    e.open("do {")

  def open_tuple_intersect(self, it: ir.TupleIntersect):
    """A lexicographic merge of ordered COO structures; the runs of equal tuples are
    visited pair by pair (every combination of one entry per structure)."""
    e, L = self.e, len(it.coords)
    S = range(len(it.parts))

    def crd(s, l, at):
      lv = it.parts[s][l]
      return f"a->{lv.crd}[b * {lv.cap} + {at}]"

    for s in S:
      root = it.parts[s][0]
      e(f"int64_t mq{s} = a->{root.pos}[b * {root.parent_cap + 1}];")
      e(f"int64_t mhi{s} = a->{root.pos}[b * {root.parent_cap + 1} + 1]; "
        f"if (mhi{s} > {root.cap}) mhi{s} = {root.cap};")
    e.open("while (" + " && ".join(f"mq{s} < mhi{s}" for s in S) + ") {")
    for s in S:
      e(" ".join(f"const int64_t mk{l}_{s} = {crd(s, l, f'mq{s}')};" for l in range(L)))
    e(" ".join(f"int64_t mx{l} = mk{l}_0;" for l in range(L)))

    def greater(s, l):
      here = f"mk{l}_{s} > mx{l}"
      return here if l == L - 1 else f"{here} || (mk{l}_{s} == mx{l} && ({greater(s, l + 1)}))"

    for s in list(S)[1:]:
      e(f"if ({greater(s, 0)}) {{ " + " ".join(f"mx{l} = mk{l}_{s};" for l in range(L)) + " }")
    equal = {s: " && ".join(f"mk{l}_{s} == mx{l}" for l in range(L)) for s in S}
    e.open("if (" + " && ".join(f"({equal[s]})" for s in S) + ") {")
    for s in S:
      e(f"int64_t me{s} = mq{s} + 1;")
      e(f"while (me{s} < mhi{s} && "
        + " && ".join(f"{crd(s, l, f'me{s}')} == mx{l}" for l in range(L)) + f") ++me{s};")
    sizes = [it.parts[0][l].size for l in range(L)]
    e.open("if (" + " && ".join(f"(uint64_t)mx{l} < {sizes[l]}" for l in range(L)) + ") {")
    e(" ".join(f"const int64_t {c.name} = mx{l};" for l, c in enumerate(it.coords)))
    for s in S:
      p = _pos(s, L - 1)
      e.open(f"for (int64_t {p} = mq{s}; {p} < me{s}; ++{p}) {{")

  def close_tuple_intersect(self, it: ir.TupleIntersect):
    e = self.e
    S = range(len(it.parts))
    for _ in S:
      e.close()
    e.close()
    e(" ".join(f"mq{s} = me{s};" for s in S))
    e.depth -= 1
    e.open("} else {")
    L = len(it.coords)
    for s in S:
      e("if (!(" + " && ".join(f"mk{l}_{s} == mx{l}" for l in range(L)) + f")) ++mq{s};")
    e.close()
    e.close()

  def close(self, it):
    e = self.e
    if isinstance(it, ir.TupleIntersect):
      self.close_tuple_intersect(it)
      return
    if not isinstance(it, ir.Intersect):
      e.close()
      return
    l, c = it.parts[0].level, it.coord.name
    e.close("} while (0);")
    e(" ".join(f"++q{l}{_sfx(s.src)};" for s in it.parts))
    e.depth -= 1
    e.open("} else {")
    for s in it.parts:
      e(f"if (k{l}_{s.src} < {c}) ++q{l}{_sfx(s.src)};")
    e.close()
    e.close()

  # -- the kernel ---------------------------------------------------------------------------
  def source(self) -> str:
    k, e = self.k, self.e
    e(f"/* jscorch generated kernel {k.name}")
    for key, text in k.notes:
      e(f" *   {key:<8}: {text}")
    e(f" *   mode    : {'vector' if k.vector else 'scalar'}, "
      f"{'parallel' if k.body.parallel is ir.Parallel.OUTER else 'serial'}, "
      f"{'store' if k.race is ir.Race.STORE else 'accumulate'} */")
    e(RUNTIME)
    e(f"typedef {C_TYPES[k.dtype]} T;")
    e(f"typedef {I_TYPES[k.index_dtype]} I;")
    e(f"typedef T vT __attribute__((vector_size({VECTOR_BYTES}), aligned(sizeof(T))));")
    e(f"enum {{ VL = {VECTOR_BYTES} / sizeof(T) }};")
    e()
    self.args()
    self.work_before()
    self.body()
    if k.stage:
      self.tiles()
    self.handler()
    return e.text() + "\n"

  def args(self):
    e = self.e
    e.open("typedef struct {")
    for buf in self.k.inputs:
      e(f"const {'T' if buf.role is ir.Role.VALUES else 'I'}* {buf.name};")
    e("const I* perm;")
    for buf in self.k.outputs:
      e(f"T* {buf.name};")
    e.close("} args_t;")
    e()

  def work_before(self):
    """Stored entries before unit u (monotone): the balance key of the parallel split."""
    e, bal = self.e, self.k.balance
    e.open("static int64_t work_before(const void* a_, int64_t u) {")
    e("const args_t* a = (const args_t*)a_;")
    e(f"if (u >= {bal.units}) return {bal.batch * bal.nse};")
    e(f"const int64_t b = u / {bal.width}, q = u % {bal.width};")
    if bal.width == 1:
      e("(void)q;")
      e(f"return b * {bal.nse};")
    else:
      e("int64_t p = q;")
      for it in bal.levels:
        if isinstance(it, ir.Segment):
          e(f"p = a->{it.pos}[b * {it.parent_cap + 1} + p]; if (p > {it.cap}) p = {it.cap};")
        elif isinstance(it, ir.Range):
          e(f"p = p * {it.size};")
      e(f"return b * {bal.nse} + p;")
    e.close()
    e()

  def body(self):
    e, outer = self.e, self.k.body
    units = outer.over
    e.open("static void body(const void* a_, int64_t lo, int64_t hi) {")
    e("const args_t* a = (const args_t*)a_;")
    e("T* restrict out = a->out;")
    e.open("for (int64_t u = lo; u < hi; ++u) {")
    e(f"const int64_t b = u / {units.width}, q = u % {units.width};")
    stride = 1
    for d in reversed(range(len(units.batch))):
      e(f"const int64_t {units.coords[d].name} = (b / {stride}) % {units.batch[d]};")
      stride *= units.batch[d]
    for s in outer.body:
      self.stmt(s)
    e.close()
    e.close()
    e()

  def slot(self) -> tuple[list[int], int]:
    """The scratch of one chunk of tiles: the staged inputs' tiles, the output's tile (an
    output summed over the tiles: all of it), and for a summed output the chunk's sums;
    returns the sizes of the parts before the sums, and the slot's size."""
    st, t = self.k.stage, self.k.stage.tile
    out = self.k.outputs[0].size
    sizes = [s.outer * s.inner * t for s in st.inputs]
    sizes.append(st.output.outer * st.output.inner * t if st.output else out)
    return sizes, sum(sizes) + (0 if st.output else out)

  def tiles(self):
    """The staged driver (:class:`loopnest.Stage`): per tile, the staged inputs copied to
    scratch `[outer, inner, tile]`, the body over all units, the output copied back (an
    output summed over the tiles: added to the chunk's sums). The copies transpose
    ``VL x VL`` blocks in registers (:meth:`copy`)."""
    e, st = self.e, self.k.stage
    n, t = st.extent, st.tile
    sizes, slot = self.slot()
    self.transpose_lanes()
    e.open("typedef struct {")
    e("const args_t* a;")
    e("T* scratch;")
    e("int64_t per;")
    e.close("} tiles_t;")
    e()
    e.open("static void tiles(const void* s_, int64_t lo, int64_t hi) {")
    e("const tiles_t* s = (const tiles_t*)s_;")
    e("const args_t* a = s->a;")
    e("args_t b = *a;")
    e(f"T* scratch = s->scratch + (lo / s->per) * (int64_t){slot};")
    at = 0
    for k, (arr, size) in enumerate(zip((*st.inputs, st.output), sizes)):
      e(f"T* s{k} = scratch + {at};")
      e(f"b.{arr.buffer if arr else 'out'} = s{k};")
      at += size
    so = f"s{len(st.inputs)}"
    if not st.output:
      e(f"T* sums = scratch + {at};")
      e(f"memset(sums, 0, sizeof(T) * {sizes[-1]});")
    e.open("for (int64_t t = lo; t < hi; ++t) {")
    e(f"const int64_t n0 = t * {t}, w = {n} - n0 < {t} ? {n} - n0 : {t};")
    for k, arr in enumerate(st.inputs):
      self.copy(f"s{k}", f"a->{arr.buffer}", arr, into_scratch=True)
    if self.k.race is ir.Race.ACCUMULATE or not st.output:
      e(f"memset({so}, 0, sizeof(T) * {sizes[-1]});")
    e(f"body(&b, 0, {self.k.balance.units});")
    if st.output:
      self.copy(so, "a->out", st.output, into_scratch=False)
    else:
      e(f"for (int64_t p = 0; p < {sizes[-1]}; ++p) sums[p] += {so}[p];")
    e.close()
    e.close()
    e()

  def copy(self, scratch: str, array: str, arr: ir.Staged, into_scratch: bool):
    """Tile ``n0 .. n0 + w`` of ``array`` `[outer, extent, inner]` to or from ``scratch``
    `[outer, inner, tile]`: ``VL x VL`` blocks transposed in registers, the remainders
    element by element; copied in, the lanes past ``w`` are zeroed."""
    e, st = self.e, self.k.stage
    n, t, inner = st.extent, st.tile, arr.inner
    full = inner - inner % self.vl
    e.open(f"for (int64_t o = 0; o < {arr.outer}; ++o) {{")
    e(f"{'const ' if into_scratch else ''}T* rows = {array} + (o * {n} + n0) * {inner};")
    e(f"{'' if into_scratch else 'const '}T* cols = {scratch} + o * {inner * t};")
    e("const int64_t wv = w - w % VL;")
    e.open(f"for (int64_t c = 0; c < {full}; c += VL)")
    e.open("for (int64_t j = 0; j < wv; j += VL) {")
    e("vT r[VL];")
    if into_scratch:
      e(f"for (int k = 0; k < VL; ++k) r[k] = *(const vT*)(rows + (j + k) * {inner} + c);")
      e("transpose_lanes(r);")
      e(f"for (int k = 0; k < VL; ++k) *(vT*)(cols + (c + k) * {t} + j) = r[k];")
    else:
      e(f"for (int k = 0; k < VL; ++k) r[k] = *(const vT*)(cols + (c + k) * {t} + j);")
      e("transpose_lanes(r);")
      e(f"for (int k = 0; k < VL; ++k) *(vT*)(rows + (j + k) * {inner} + c) = r[k];")
    e.close()
    e.depth -= 1
    if into_scratch:
      e(f"for (int64_t j = 0; j < {t}; ++j)")
      e(f"  for (int64_t c = j < wv ? {full} : 0; c < {inner}; ++c)")
      e(f"    cols[c * {t} + j] = j < w ? rows[j * {inner} + c] : 0;")
    else:
      e("for (int64_t j = 0; j < w; ++j)")
      e(f"  for (int64_t c = j < wv ? {full} : 0; c < {inner}; ++c)")
      e(f"    rows[j * {inner} + c] = cols[c * {t} + j];")
    e.close()

  @property
  def vl(self) -> int:
    """Lanes per vector (``VL`` in the C text)."""
    return VECTOR_BYTES // ITEMSIZES[self.k.dtype]

  def transpose_lanes(self):
    """``transpose_lanes(r)``: ``VL`` vectors ``r`` (the rows of a ``VL x VL`` block)
    replaced by its columns, in log2(VL) rounds of two-vector shuffles."""
    e, lanes = self.e, self.vl
    if lanes == 8:
      e("typedef int32_t vI __attribute__((vector_size(32)));")
      rounds = (((0, 8, 2, 10, 4, 12, 6, 14), (1, 9, 3, 11, 5, 13, 7, 15)),
                ((0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15)),
                ((0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15)))
    else:
      assert lanes == 4, lanes
      e("typedef int64_t vI __attribute__((vector_size(32)));")
      rounds = (((0, 4, 2, 6), (1, 5, 3, 7)), ((0, 1, 4, 5), (2, 3, 6, 7)))
    e.open("static inline void transpose_lanes(vT* r) {")
    e("vT t[VL];")
    # round s pairs vectors 2^s apart: (lo, hi) of the pair land at the pair's two places
    for s, (lo, hi) in enumerate(rounds):
      e(f"const vI lo{s} = {{{', '.join(map(str, lo))}}}, hi{s} = {{{', '.join(map(str, hi))}}};")
    src, dst = "r", "t"
    for s in range(len(rounds)):
      gap = 1 << s
      for k in range(lanes):
        if k & gap:
          continue
        e(f"{dst}[{k}] = __builtin_shuffle({src}[{k}], {src}[{k + gap}], lo{s}); "
          f"{dst}[{k + gap}] = __builtin_shuffle({src}[{k}], {src}[{k + gap}], hi{s});")
      src, dst = dst, src
    if src != "r":
      e("for (int k = 0; k < VL; ++k) r[k] = t[k];")
    e.close()
    e()

  def transpose(self, t: ir.Transpose):
    """Counting sort of a (dense, compressed) structure into column-major scratch."""
    e, n0, n1, nse = self.e, t.rows, t.cols, t.nse
    e(f"I* tpos = (I*)calloc({n1 + 1}, sizeof(I));")
    e(f"I* tcrd = (I*)malloc(sizeof(I) * {max(nse, 1)});")
    e(f"I* tperm = (I*)malloc(sizeof(I) * {max(nse, 1)});")
    e(f"I* next = (I*)malloc(sizeof(I) * {max(n1, 1)});")
    e("if (!tpos || !tcrd || !tperm || !next) { free(tpos); free(tcrd); free(tperm); free(next); "
      "return jscorch_error(cf, \"jscorch kernel: out of memory for the transposed structure\"); }")
    e(f"const I* pos = (const I*)a.{t.pos};")
    e(f"const I* crd = (const I*)a.{t.crd};")
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
    e(f"a.{t.pos} = tpos; a.{t.crd} = tcrd; a.perm = tperm;")

  def handler(self):
    k, e = self.k, self.e
    e(f"XLA_FFI_Error* {k.name}(XLA_FFI_CallFrame* cf) {{")
    e.depth += 1
    e("XLA_FFI_Error* early;")
    e("if (jscorch_preamble(cf, &early)) return early;")
    e("args_t a;")
    for buf in k.inputs:
      ctype = "T" if buf.role is ir.Role.VALUES else "I"
      e(f"a.{buf.name} = (const {ctype}*)jscorch_arg(cf, {buf.arg});")
    for n, buf in enumerate(k.outputs):
      e(f"a.{buf.name} = (T*)jscorch_ret(cf, {n});")
    for t in k.prologue:
      self.transpose(t)
    if k.race is ir.Race.ACCUMULATE and not k.stage:     # (a staged output is copied whole)
      for buf in k.outputs:
        e(f"memset(a.{buf.name}, 0, sizeof(T) * (size_t){buf.size});")
    units = k.balance.units
    if k.stage:
      self.staged_call()
    elif k.body.parallel is ir.Parallel.OUTER and k.balance.split:
      e("int64_t n_chunks = 4 * jscorch_num_threads(cf);")
      e("if (n_chunks > 256) n_chunks = 256;")
      e("int64_t bounds[257];")
      e(f"n_chunks = jscorch_split({units}, work_before, &a, n_chunks, bounds);")
      e("jscorch_parallel_for(cf, body, &a, bounds, n_chunks);")
    else:
      e(f"body(&a, 0, {units});")
    if k.prologue:
      e("free(tpos); free(tcrd); free(tperm);")
    e("return NULL;")
    e.depth -= 1
    e("}")

  def staged_call(self):
    """Tiles in equal chunks, each with its own scratch :meth:`slot`."""
    e, st = self.e, self.k.stage
    tiles = -(-st.extent // st.tile)
    sizes, slot = self.slot()
    # (an output summed over the tiles: one chunk per thread, each with its own sums)
    per_thread = "jscorch_num_threads(cf)" if st.output is None else "4 * jscorch_num_threads(cf)"
    e(f"int64_t n_chunks = {per_thread if st.split else 1};")
    e(f"if (n_chunks > {min(tiles, 256)}) n_chunks = {min(tiles, 256)};")
    e(f"const int64_t per = ({tiles} + n_chunks - 1) / n_chunks;")
    e(f"n_chunks = ({tiles} + per - 1) / per;")
    e("int64_t bounds[257];")
    e(f"for (int64_t c = 0; c <= n_chunks; ++c) bounds[c] = c * per < {tiles} ? c * per : {tiles};")
    e(f"T* scratch = (T*)malloc(sizeof(T) * {slot} * (size_t)n_chunks);")
    free = " free(tpos); free(tcrd); free(tperm);" if self.k.prologue else ""
    e(f"if (!scratch) {{{free} return jscorch_error(cf, \"jscorch kernel: out of memory for "
      "the staged tiles\"); }")
    e("tiles_t s = {&a, scratch, per};")
    e("jscorch_parallel_for(cf, tiles, &s, bounds, n_chunks);")
    if not st.output:                     # the chunks' sums, added in chunk order
      e.open(f"for (int64_t p = 0; p < {sizes[-1]}; ++p) {{")
      e("T v = 0;")
      e(f"for (int64_t c = 0; c < n_chunks; ++c) v += scratch[c * {slot} + {sum(sizes)} + p];")
      e("a.out[p] = v;")
      e.close()
    e("free(scratch);")


def generate(kernel: ir.Kernel) -> str:
  """The C source of ``kernel``: one FFI handler named ``kernel.name``."""
  return _Printer(kernel).source()
