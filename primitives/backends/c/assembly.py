"""The C backend's printer for structure kernels: a :class:`~jscorch.primitives.loopnest.Assembly`
as C source (the einsum kernels' printer is :mod:`.printer`; this one shares its line
writer and, like it, decides nothing).

* every run-time :class:`~.loopnest.Size` is read in the handler (a buffer's last dim
  or the params operand), checked non-negative, and every buffer's elements are checked
  against ``batch * per_batch``; each function copies the sizes it reads into locals;
* a :class:`~.loopnest.Loop` over :class:`~.loopnest.Rows` becomes a function over a
  range of rows, run by ``jscorch_parallel_for`` in chunks balanced by the parts' entries
  before each row (``Parallel.OUTER``), else serially;
* a :class:`~.loopnest.Union` of two parts prints as a branch-free merge (the heads'
  order is data, not a predictable branch: arithmetic selects, both ``dest`` slots
  written every step, the one that did not advance written again later), unguarded
  when the row cannot reach the capacity; with only :class:`~.loopnest.Fold` s and one
  value per entry, as an indexed select of the values. Of more parts, as the smallest
  head (``INT64_MAX`` for an exhausted part), then every part whose head equals it
  advances, again by arithmetic selects. A union that only counts prints without
  writes, and with :attr:`~.loopnest.Count.bitmap` as a bitmap per chunk when the columns
  are few enough;
* :class:`~.loopnest.Unreached`, :class:`~.loopnest.PrefixSum` and
  :class:`~.loopnest.Finalize` print inline in the loop over batch elements.

Example:
  >>> from jscorch.primitives.formats import CSR
  >>> from jscorch.primitives.layout import Layout
  >>> from jscorch.primitives.structure import union_loops
  >>> from jscorch.primitives.structure.union_kernel import UnionPlan
  >>> a = Layout(CSR, (2, 3), 2)
  >>> k = union_loops.lower(UnionPlan(Layout(CSR, (2, 3), 3), (a, a), (None, None), "add"),
  ...                       "int32")
  >>> src = generate(k)
  >>> src.splitlines()[0] == f"/* jscorch structure kernel {k.name}"
  True
"""
from __future__ import annotations

import dataclasses

from ... import loopnest as ir
from ...c_runtime import RUNTIME
from .printer import I_TYPES, _Lines

_VAL_TYPES = {"float32": "float", "float64": "double", "int32": "int32_t", "int64": "int64_t"}

_HELPERS = r"""
static inline const XLA_FFI_Buffer* arg_buf(XLA_FFI_CallFrame* cf, int64_t i) {
  return (const XLA_FFI_Buffer*)cf->args.args[i];
}
static inline const XLA_FFI_Buffer* ret_buf(XLA_FFI_CallFrame* cf, int64_t i) {
  return (const XLA_FFI_Buffer*)cf->rets.rets[i];
}
/* The last dim of a buffer (1 for a scalar), the product of the others, of all. */
static inline int64_t last_dim(const XLA_FFI_Buffer* b) {
  return b->rank ? b->dims[b->rank - 1] : 1;
}
static inline int64_t lead_dims(const XLA_FFI_Buffer* b) {
  int64_t n = 1;
  for (int64_t d = 0; d + 1 < b->rank; ++d) n *= b->dims[d];
  return n;
}
static inline int64_t elements(const XLA_FFI_Buffer* b) {
  return lead_dims(b) * (b->rank ? b->dims[b->rank - 1] : 1);
}
"""


def _vars(node) -> set[str]:
  """Names of every :class:`~.loopnest.Var` in ``node`` (a tree of IR dataclasses)."""
  if isinstance(node, ir.Var):
    return {node.name}
  if isinstance(node, (tuple, list)):
    return set().union(*map(_vars, node)) if node else set()
  if dataclasses.is_dataclass(node):
    return _vars([getattr(node, f.name) for f in dataclasses.fields(node)])
  return set()


class _Printer:
  """Prints one structure kernel."""

  def __init__(self, k: ir.Assembly):
    self.k = k
    self.e = _Lines()
    self.types = {"index": "idx_t", "count": "cnt_t", "value": "val_t", "int64": "int64_t"}
    self.arrays = {a.name: a for a in (*k.inputs, *k.outputs, *k.scratch)}
    self.loops = 0

  # -- expressions ------------------------------------------------------------------------
  def expr(self, x) -> str:
    if isinstance(x, ir.Const):
      return str(x.value)
    if isinstance(x, (ir.Var, ir.Coord)):
      return x.name
    if isinstance(x, ir.Load):
      return f"{x.buffer}[{self.expr(x.offset)}]"
    if isinstance(x, ir.Add):
      return " + ".join(self.expr(t) for t in x.terms)
    if isinstance(x, ir.Mul):
      return " * ".join(f"({self.expr(f)})" if isinstance(f, ir.Add) else self.expr(f)
                        for f in x.factors)
    raise TypeError(f"C printer: not a structure-kernel expression; got {x!r}")

  def locals(self, node):
    """Copies the sizes and buffer pointers ``node`` reads out of the args."""
    e = self.e
    e("const args_t* a = (const args_t*)a_;")
    names = sorted(_vars(node))
    if names:
      e("const int64_t " + ", ".join(f"{v} = a->{v}" for v in names) + ";")
    for name in sorted(self._buffers(node)):
      arr = self.arrays[name]
      const = "const " if arr.arg >= 0 else ""
      e(f"{const}{self.types[arr.dtype]}* {name} = a->{name};")

  def _buffers(self, node) -> set[str]:
    """Names of the kernel's buffers ``node`` reads or writes (string fields naming one)."""
    if isinstance(node, (tuple, list)):
      return set().union(*map(self._buffers, node)) if node else set()
    if not dataclasses.is_dataclass(node):
      return set()
    out = set()
    for f in dataclasses.fields(node):
      v = getattr(node, f.name)
      if isinstance(v, str) and v in self.arrays and f.name != "name":
        out.add(v)
      else:
        out |= self._buffers(v)
    return out

  # -- segments -----------------------------------------------------------------------------
  def segment(self, p: ir.RowSegment, row: str, dest: str | None):
    """``p{k}, e{k}``: the part's in-bounds segment of output row ``row``, padding at its
    ends trimmed (``dest`` of the trimmed entries set to ``nse`` when ``dest`` is given)."""
    e, k = self.e, p.src
    e(f"int64_t p{k} = 0, e{k} = 0;")
    e.open("{")
    e(f"const int64_t row = {row} - {p.row_off.name};")
    e.open(f"if (row >= 0 && row < {p.rows.name}) {{")
    e(f"p{k} = {p.pos}[row]; e{k} = {p.pos}[row + 1];")
    e(f"if (p{k} < 0) p{k} = 0;")
    e(f"if (e{k} > {p.cap.name}) e{k} = {p.cap.name};")
    e(f"if (e{k} < p{k}) e{k} = p{k};")
    e.close()
    e.close()
    mark = f" {dest}[p{k}] = (idx_t)nse;" if dest else ""
    e(f"while (p{k} < e{k} && {p.crd}[p{k}] < 0) {{{mark} ++p{k}; }}")
    mark = f" {dest}[e{k} - 1] = (idx_t)nse;" if dest else ""
    e(f"while (e{k} > p{k} && {p.crd}[e{k} - 1] >= {p.cols.name}) {{{mark} --e{k}; }}")

  def head(self, p: ir.RowSegment, at: str) -> str:
    return f"(int64_t){p.crd}[{at}] + {p.col_off.name}"

  # -- leaf statements (Link, Fold) ---------------------------------------------------------
  def leaf(self, s, part_state: dict):
    """One leaf statement at leaf ``q``. ``part_state[k]``: ``"hit"`` (part k stores the
    coordinate at ``p{k}``), ``"miss"`` or ``"select"`` (``g{k}`` says it misses)."""
    e = self.e
    k = s.src
    state = part_state[k]
    cap = s.cap.name
    index = {"hit": f"p{k}", "miss": cap, "select": f"p{k} + g{k} * ({cap} - p{k})"}[state]
    if isinstance(s, ir.Link):
      if s.source:
        e(f"{s.source}[q] = (idx_t)({index});")
    elif isinstance(s, ir.Fold):
      e(f"fold_{k}(a, q, {index});")

  def links_dest(self, leaves, part_state):
    """``dest`` writes (not guarded by the capacity: every entry learns its leaf)."""
    for s in leaves:
      if isinstance(s, ir.Link) and s.dest and part_state.get(s.src) in ("hit", "select"):
        self.e(f"d{s.src}[p{s.src}] = (idx_t)q;")

  # -- unions ---------------------------------------------------------------------------------
  def fold_functions(self, leaves):
    """``fold_k(a, q, i)``: part k's values at entry ``i`` (its capacity: none) summed into
    leaf ``q``, folded in part order as XLA sums the gathers."""
    e = self.e
    for s in leaves:
      if not isinstance(s, ir.Fold):
        continue
      k = s.src
      e.open(f"static inline void fold_{k}(const args_t* a, int64_t q, int64_t i) {{")
      e(f"const int64_t blk = a->{s.block.name};")
      e(f"val_t* o = a->{s.out} + q * blk;")
      if s.first:
        e(f"if (i >= a->{s.cap.name}) {{ for (int64_t j = 0; j < blk; ++j) o[j] = (val_t)0; "
          "return; }")
        e(f"const val_t* v = a->{s.values} + i * blk;")
        e("for (int64_t j = 0; j < blk; ++j) o[j] = v[j];")
      else:
        e(f"if (i >= a->{s.cap.name}) {{ "
          "for (int64_t j = 0; j < blk; ++j) o[j] = o[j] + (val_t)0; "
          "return; }")
        e(f"const val_t* v = a->{s.values} + i * blk;")
        e("for (int64_t j = 0; j < blk; ++j) o[j] = o[j] + v[j];")
      e.close()
      e()

  def merge_two(self, u: ir.Union, fill, name: str):
    """``name(a, p0, e0, p1, e1, at, checked)``: writes leaves ``at, at + 1, ...`` of the
    merge; ``checked`` (a constant after inlining) guards the leaves at or past the
    capacity."""
    e = self.e
    append, leaves = fill[0], fill[1:]
    P = u.parts
    e.open(f"static inline void {name}(const args_t* a_, int64_t p0, int64_t e0, int64_t p1, "
           "int64_t e1, int64_t at, int checked) {")
    self.locals((u, fill))
    for s in leaves:
      if isinstance(s, ir.Link) and s.dest:
        e(f"idx_t* d{s.src} = {s.dest} + {self.expr(s.at)};")
    e("int64_t q = at;")
    folds = [s for s in leaves if isinstance(s, ir.Fold)]
    if folds and len(folds) == len(leaves):
      # one value per entry: an indexed select of each value and zero (a branch on which
      # part stores the leaf mispredicts about every other step)
      blk = folds[0].block.name
      e.open(f"if ({blk} == 1 && !checked) {{")
      e.open("while (p0 < e0 && p1 < e1) {")
      e(f"const int64_t x = {self.head(P[0], 'p0')}, y = {self.head(P[1], 'p1')};")
      e("const int64_t g0 = x > y, g1 = y > x;")
      e(" ".join(f"const val_t pick{s.src}[2] = {{{s.values}[p{s.src}], (val_t)0}};"
                 for s in folds))
      e(f"{append.crd}[q] = (idx_t)(x - g0 * (x - y));")
      e(f"{folds[0].out}[q] = " + " + ".join(f"pick{s.src}[g{s.src}]" for s in folds) + ";")
      e("p0 += 1 - g0; p1 += 1 - g1; ++q;")
      e.close()
      e.close()
    e.open("while (p0 < e0 && p1 < e1) {")
    e(f"const int64_t x = {self.head(P[0], 'p0')}, y = {self.head(P[1], 'p1')};")
    e("const int64_t g0 = x > y, g1 = y > x;      /* part 0 (1) stores nothing here */")
    self.links_dest(leaves, {0: "select", 1: "select"})
    e.open(f"if (!checked || q < {append.cap.name}) {{")
    e(f"{append.crd}[q] = (idx_t)(x - g0 * (x - y));")
    for s in leaves:
      self.leaf(s, {0: "select", 1: "select"})
    e.close()
    e("p0 += 1 - g0; p1 += 1 - g1; ++q;")
    e.close()
    for k in (0, 1):
      state = {k: "hit", 1 - k: "miss"}
      e.open(f"for (; p{k} < e{k}; ++p{k}, ++q) {{")
      self.links_dest(leaves, state)
      e.open(f"if (!checked || q < {append.cap.name}) {{")
      e(f"{append.crd}[q] = (idx_t)({self.head(P[k], f'p{k}')});")
      for s in leaves:
        self.leaf(s, state)
      e.close()
      e.close()
    e.close()
    e()

  def merge_any(self, u: ir.Union, fill):
    """The merge of any number of parts, inline and branch-free as :meth:`merge_two`: the
    smallest head, then every part whose head equals it advances (``fill`` None: count
    only, into ``n``)."""
    e = self.e
    P = u.parts
    e("int64_t n = 0;")
    if fill:
      append = fill[0]
      e(f"const int64_t at = {self.expr(append.start)};")
    e.open("for (;;) {")
    for p in P:
      k = p.src
      e(f"const int64_t x{k} = p{k} < e{k} ? {self.head(p, f'p{k}')} : INT64_MAX;")
    e("int64_t c = x0;")
    for p in P[1:]:
      e(f"if (x{p.src} < c) c = x{p.src};")
    e("if (c == INT64_MAX) break;")
    e(" ".join(f"const int64_t g{p.src} = x{p.src} != c;" for p in P)
      + "      /* part k stores nothing here */")
    if fill:
      e("const int64_t q = at + n;")
      for s in fill[1:]:
        if isinstance(s, ir.Link) and s.dest:     # rewritten with its leaf when it advances
          e(f"if (p{s.src} < e{s.src}) d{s.src}[p{s.src}] = (idx_t)q;")
      e.open(f"if (q < {append.cap.name}) {{")
      e(f"{append.crd}[q] = (idx_t)c;")
      for s in fill[1:]:
        self.leaf(s, {s.src: "select"})
      e.close()
    e(" ".join(f"p{p.src} += 1 - g{p.src};" for p in P))
    e("++n;")
    e.close()

  def count_two(self, u: ir.Union, bitmap: bool):
    """The size of a two-part row, into ``n``: by the bitmap ``bits`` (|A| + |B| - |A & B|;
    columns clamped, so always in bounds), else a merge without writes."""
    e = self.e
    P = u.parts
    if not bitmap:
      e("int64_t n = 0;")
      e.open("while (p0 < e0 && p1 < e1) {")
      e(f"const int64_t x = {self.head(P[0], 'p0')}, y = {self.head(P[1], 'p1')};")
      e("p0 += x <= y; p1 += y <= x; ++n;")
      e.close()
      e("n += (e0 - p0) + (e1 - p1);")
      return
    e("int64_t hits = 0;")
    for k, op in ((0, "mark"), (1, "test"), (0, "clear")):
      e.open(f"for (int64_t p = p{k}; p < e{k}; ++p) {{")
      e(f"uint64_t c = (uint64_t)({self.head(P[k], 'p')});")
      e("c = c < top ? c : top;")
      e({"mark": "bits[c >> 6] |= 1ull << (c & 63);",
         "test": "hits += (int64_t)((bits[c >> 6] >> (c & 63)) & 1);",
         "clear": "bits[c >> 6] = 0;"}[op])
      e.close()
    e("const int64_t n = (e0 - p0) + (e1 - p1) - hits;")

  # -- loops over rows -------------------------------------------------------------------------
  def rows_function(self, loop: ir.Loop) -> str:
    """Prints ``pass_N`` (and its helpers) for a loop over rows; returns its name."""
    e = self.e
    self.loops += 1
    name = f"pass_{self.loops}"
    (inner,) = loop.body
    u = inner.over
    assert isinstance(inner, ir.Loop) and isinstance(u, ir.Union), loop
    counting = isinstance(inner.body[0], ir.Count)
    fill = None if counting else inner.body
    two = len(u.parts) == 2
    if fill and two:
      self.merge_two(u, fill, f"merge_{self.loops}")
    dests = {s.src: s for s in (fill or ()) if isinstance(s, ir.Link) and s.dest}
    e.open(f"static void {name}(const void* a_, int64_t lo, int64_t hi) {{")
    self.locals((loop, ))
    count = inner.body[0] if counting else None
    variants = [False]
    if count and two and count.bitmap:     # the row loop twice: with the bitmap, without
      cols = count.cols.name
      e(f"uint64_t* bits = {cols} <= {count.bitmap}LL ? "
        f"(uint64_t*)calloc({cols} / 64 + 1, sizeof(uint64_t)) : NULL;")
      e(f"const uint64_t top = (uint64_t){cols};")
      e.open("if (bits) {")
      variants = [True, False]
    for link in dests.values():
      e(f"idx_t* d{link.src} = {link.dest} + {self.expr(link.at)};")
    for bitmap in variants:
      if not bitmap and len(variants) == 2:
        e.depth -= 1
        e.open("} else {")
      r = loop.over.coord.name
      e.open(f"for (int64_t {r} = lo; {r} < hi; ++{r}) {{")
      for p in u.parts:
        self.segment(p, r, f"d{p.src}" if p.src in dests else None)
      if count and two:
        self.count_two(u, bitmap)
      elif count:
        self.merge_any(u, None)
      elif two:
        append = fill[0]
        e(f"const int64_t at = {self.expr(append.start)};")
        call = f"merge_{self.loops}(a, p0, e0, p1, e1, at, %d);"
        e(f"if (at + (e0 - p0) + (e1 - p1) <= {append.cap.name}) {call % 0}")
        e(f"else {call % 1}")
      else:
        self.merge_any(u, fill)
      if count:
        e(f"{count.out}[{self.expr(count.at)}] = n;")
      e.close()
    if len(variants) == 2:
      e.close()
      e("free(bits);")
    e.close()
    e()
    return name

  def work_function(self, rows: ir.Rows) -> str:
    """``work_N(a, u)``: entries of the parts before output row ``u``, plus ``u``
    (monotone: the balance of the parallel split)."""
    e = self.e
    name = f"work_{self.loops}"
    e.open(f"static int64_t {name}(const void* a_, int64_t u) {{")
    self.locals(rows.parts)
    e("int64_t w = u;")
    for p in rows.parts:
      e.open("{")
      e(f"int64_t row = u - {p.row_off.name};")
      e(f"row = row < 0 ? 0 : (row > {p.rows.name} ? {p.rows.name} : row);")
      e(f"const int64_t v = {p.pos}[row];")
      e(f"w += v < 0 ? 0 : (v > {p.cap.name} ? {p.cap.name} : v);")
      e.close()
    e("return w;")
    e.close()
    e()
    return name

  # -- statements of the loop over batch elements --------------------------------------------
  def stmt(self, s, functions):
    e = self.e
    if isinstance(s, ir.Loop):
      rows_fn, work_fn = functions[id(s)]
      n = s.over.size.name
      if s.parallel is ir.Parallel.OUTER:
        e.open("{")
        e(f"int64_t chunks = {work_fn}(a, {n}) < {s.over.split_at} ? 1 : n_chunks;")
        e(f"chunks = jscorch_split({n}, {work_fn}, a, chunks, bounds);")
        e(f"jscorch_parallel_for(cf, {rows_fn}, a, bounds, chunks);")
        e.close()
      else:
        e(f"{rows_fn}(a, 0, {n});")
    elif isinstance(s, ir.Unreached):
      p = s.part
      e.open("{      /* entries outside every row go nowhere */")
      e(f"int64_t s = {p.pos}[0]; s = s < 0 ? 0 : (s > {p.cap.name} ? {p.cap.name} : s);")
      e(f"int64_t e = {p.pos}[{p.rows.name}]; "
        f"e = e < s ? s : (e > {p.cap.name} ? {p.cap.name} : e);")
      e(f"idx_t* d = {s.dest} + {self.expr(s.at)};")
      e(f"for (int64_t q = 0; q < s; ++q) d[q] = (idx_t){s.none.name};")
      e(f"for (int64_t q = e; q < {p.cap.name}; ++q) d[q] = (idx_t){s.none.name};")
      e.close()
    elif isinstance(s, ir.PrefixSum):
      b, n = s.buffer, s.size.name
      e(f"{b}[0] = 0;")
      e(f"for (int64_t r = 0; r < {n}; ++r) {b}[r + 1] += {b}[r];")
    elif isinstance(s, ir.Finalize):
      st, n, cap = s.start, s.rows.name, s.cap.name
      e(f"for (int64_t r = 0; r <= {n}; ++r) "
        f"{s.pos}[r] = (idx_t)({st}[r] < {cap} ? {st}[r] : {cap});")
      e.open(f"for (int64_t q = {st}[{n}]; q < {cap}; ++q) {{      /* padding leaves */")
      e(f"{s.crd}[q] = (idx_t){s.pad.name};")
      for leaf in s.leaves:
        self.leaf(leaf, {leaf.src: "miss"})
      e.close()
      e(f"{s.count}[0] = (cnt_t){st}[{n}];")
    else:
      raise TypeError(f"C printer: not a structure-kernel statement; got {s!r}")

  # -- the kernel -------------------------------------------------------------------------------
  def source(self) -> str:
    k, e = self.k, self.e
    e(f"/* jscorch structure kernel {k.name}")
    for key, text in k.notes:
      e(f" *   {key:<8}: {text}")
    e(" *   sizes   : read at run time (buffers' dims, the params operand) */")
    e(RUNTIME)
    e(_HELPERS)
    e(f"typedef {I_TYPES[k.index_dtype]} idx_t;")
    e(f"typedef {I_TYPES[k.count_dtype]} cnt_t;")
    e(f"typedef {_VAL_TYPES[k.value_dtype or 'float32']} val_t;")
    e()
    e.open("typedef struct {")
    e("int64_t " + ", ".join(s.name for s in k.sizes) + ";")
    e("/* this batch element's buffers */")
    for arr in (*k.inputs, *k.outputs, *k.scratch):
      const = "const " if arr.arg >= 0 else ""
      e(f"{const}{self.types[arr.dtype]}* {arr.name};")
    e.close("} args_t;")
    e()
    self.fold_functions(next((s.leaves for s in k.body if isinstance(s, ir.Finalize)), ()))
    functions = {}
    for s in k.body:
      if isinstance(s, ir.Loop):
        rows = self.rows_function(s)
        functions[id(s)] = (rows, self.work_function(s.over))
    self.handler(functions)
    return e.text() + "\n"

  def handler(self, functions):
    k, e = self.k, self.e
    n_in, n_out = len(k.inputs), len(k.outputs)
    n_params = max(s.param for s in k.sizes) + 1
    e(f"XLA_FFI_Error* {k.name}(XLA_FFI_CallFrame* cf) {{")
    e.depth += 1
    e("XLA_FFI_Error* early;")
    e("if (jscorch_preamble(cf, &early)) return early;")
    e(f"if (cf->args.size != {n_in + 1} || cf->rets.size != {n_out})")
    e(f'  return jscorch_error(cf, "{k.name}: wrong number of buffers");')
    e(f"const XLA_FFI_Buffer* prm = arg_buf(cf, {n_in});")
    e("if (prm->dtype != XLA_FFI_DataType_S64 || prm->rank != 1 || "
      f"prm->dims[0] != {n_params})")
    e(f'  return jscorch_error(cf, "{k.name}: params must be int64 [{n_params}]");')
    e("const int64_t* params = (const int64_t*)prm->data;")
    e("args_t args;")
    e("args_t* a = &args;")
    for s in k.sizes:
      if s.buffer is None:
        e(f"a->{s.name} = params[{s.param}];")
      else:
        arr = self.arrays[s.buffer]
        get = f"arg_buf(cf, {arr.arg})" if arr.arg >= 0 else f"ret_buf(cf, {arr.ret})"
        e(f"a->{s.name} = last_dim({get})" + (f" + {s.add};" if s.add else ";"))
    names = sorted(_vars([a.per_batch for a in (*k.inputs, *k.outputs, *k.scratch)])
                   | {s.name for s in k.sizes})
    e("const int64_t " + ", ".join(f"{v} = a->{v}" for v in names) + ";")
    e(f"const int64_t batch = lead_dims(ret_buf(cf, {self.arrays[k.batch].ret}));")
    e("if (" + " || ".join(f"{s.name} < 0" for s in k.sizes) + ")")
    e(f'  return jscorch_error(cf, "{k.name}: negative sizes");')
    checks = [f"elements({'arg' if a.arg >= 0 else 'ret'}_buf(cf, "
              f"{a.arg if a.arg >= 0 else a.ret})) != batch * ({self.expr(a.per_batch)})"
              for a in (*k.inputs, *k.outputs)]
    e.open("if (" + checks[0] + " ||")
    for c in checks[1:-1]:
      e(c + " ||")
    e(checks[-1] + ")")
    e.close(f'return jscorch_error(cf, "{k.name}: buffer shapes do not agree");')
    for arr in k.scratch:
      e(f"int64_t* {arr.name} = (int64_t*)malloc(sizeof(int64_t) * "
        f"({self.expr(arr.per_batch)}));")
    e("int64_t n_chunks = 4 * jscorch_num_threads(cf);")
    e("int64_t* bounds = (int64_t*)malloc(sizeof(int64_t) * (n_chunks + 1));")
    scratch = [arr.name for arr in k.scratch] + ["bounds"]
    e.open("if (" + " || ".join(f"!{n}" for n in scratch) + ") {")
    e(" ".join(f"free({n});" for n in scratch))
    e(f'return jscorch_error(cf, "{k.name}: out of memory");')
    e.close()
    for arr in k.scratch:
      e(f"a->{arr.name} = {arr.name};")
    e.open("for (int64_t b = 0; b < batch; ++b) {")
    for arr in (*k.inputs, *k.outputs):
      t = self.types[arr.dtype]
      const = "const " if arr.arg >= 0 else ""
      get = f"jscorch_arg(cf, {arr.arg})" if arr.arg >= 0 else f"jscorch_ret(cf, {arr.ret})"
      e(f"a->{arr.name} = ({const}{t}*){get} + b * ({self.expr(arr.per_batch)});")
    for arr in (*k.inputs, *k.outputs):
      const = "const " if arr.arg >= 0 else ""
      e(f"{const}{self.types[arr.dtype]}* {arr.name} = a->{arr.name};")
    for s in k.body:
      self.stmt(s, functions)
    e.close()
    e(" ".join(f"free({n});" for n in scratch))
    e("return NULL;")
    e.depth -= 1
    e("}")


def generate(kernel: ir.Assembly) -> str:
  """The C source of ``kernel``: one FFI handler named ``kernel.name``."""
  return _Printer(kernel).source()
