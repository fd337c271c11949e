"""The C backend's printer for conversion kernels: an :class:`~jscorch.primitives.loopnest.Assembly`
of :mod:`~jscorch.primitives.structure.convert_loops` (constant sizes) as C source. Like the
other printers it decides nothing; its printing choices for the IR's nodes:

* :class:`~.loopnest.Entries` prints as nested loops over the source levels (or the
  coordinate list), over a range of outermost positions so that a ``Parallel.OUTER``
  loop runs in chunks on XLA's thread pool (one batch element, from ``split_at``
  entries); with ``runs`` the innermost level binds a run ``[rlo, rhi)``;
* the counting sort (:class:`~.loopnest.Tally`, :class:`~.loopnest.Offsets`,
  :class:`~.loopnest.Scatter`) in parallel loops prints per-chunk histograms whose
  prefix sums, chunks in order, are every chunk's write offsets (the sort stays stable);
* :class:`~.loopnest.Histogram` and :class:`~.loopnest.Copy` in chunks count into
  per-chunk rows a cache line apart and record the entries each chunk wrote;
  :class:`~.loopnest.Pad` fills the gaps between them and :class:`~.loopnest.Offsets`
  sums the chunks' counts;
* :class:`~.loopnest.SortBuckets` prints as insertion sort for short buckets, else a
  merge sort of local indices; :class:`~.loopnest.RadixSort` as one counting pass per
  key, or 16-bit digits where a key's range exceeds ``hist_cap``;
* :class:`~.loopnest.Builder` statements as a ``builder`` (its levels' constants baked
  in); scratch buffers are per-thread and grow-only (no page faults per call).

Example:
  >>> from jscorch.primitives.formats import CSR, CSC
  >>> from jscorch.primitives.layout import Layout
  >>> from jscorch.primitives.structure import convert_loops
  >>> from jscorch.primitives.structure.plan import make_plan
  >>> k = convert_loops.lower(make_plan(Layout(CSC, (4, 5), 6), Layout(CSR, (4, 5), 6)))
  >>> generate(k).splitlines()[0] == f"/* jscorch structure kernel {k.name}"
  True
"""
from __future__ import annotations

from ... import loopnest as ir
from ...c_runtime import RUNTIME
from .convert_text import BATCH, BUCKET_SORT, BUILDER, PASS, PASS_ONE, RADIX, SCRATCH, TRANSPOSE
from .printer import I_TYPES, _Lines

_TYPES = {"index": "idx_t", "source": "sidx_t", "entry": "ord_t", "int64": "int64_t"}


def _code(lvl) -> int:
  """``DST_KIND`` of the builder's C text: 0 full, 1 segments (``pos``), 2 branchless."""
  return 1 if lvl.pos else 2 if lvl.branchless else 0


def _ints(values) -> str:
  return "{" + ", ".join(str(int(v)) for v in values) + "}" if values else "{0}"


class _Printer:
  """Prints one conversion kernel."""

  def __init__(self, k: ir.Assembly):
    self.k = k
    self.e = _Lines()
    self.arrays = {a.name: a for a in (*k.inputs, *k.outputs, *k.scratch)}
    self.slots = {a.name: i for i, a in enumerate(k.scratch)}

  def size(self, name: str) -> int:
    return self.arrays[name].per_batch.value

  # -- buffers ------------------------------------------------------------------------------
  def declare(self, names=None):
    """Pointers to this batch element's inputs and outputs (``a``, ``b`` in scope)."""
    for arr in (*self.k.inputs, *self.k.outputs):
      if names is not None and arr.name not in names:
        continue
      t = _TYPES[arr.dtype]
      if arr.arg >= 0:
        self.e(f"const {t}* {arr.name} = (const {t}*)a->in[{arr.arg}] + b * "
               f"{arr.per_batch.value}LL; (void){arr.name};")
      else:
        self.e(f"{t}* {arr.name} = ({t}*)a->out[{arr.ret}] + b * {arr.per_batch.value}LL; "
               f"(void){arr.name};")

  # -- the walk over the source -------------------------------------------------------------
  def walk(self, w: ir.Entries, clo: str, chi: str, body: list[str]):
    """Nested loops over the entries whose outermost position is in ``[clo, chi)``;
    ``body`` sees ``e``, ``row``, ``ok`` (``runs``: ``rlo``, ``rhi``, ``row``, ``ok``)."""
    e, L = self.e, len(w.rows)
    if w.coords is not None:
      end = "" if chi == "INT64_MAX" else f" && e < {chi}"
      e.open(f"for (int64_t e = {clo}; e < {w.n}LL{end}; ++e) {{")
      e(f"int64_t row[{L}]; int ok = 1;")
      e.open(f"for (int k = 0; k < {L}; ++k) {{")
      e(f"row[k] = (int64_t){w.coords}[e * {L} + k];")
      e("ok &= row[k] >= 0 && row[k] < IN_SIZE[k];")
      e.close()
      for line in body:
        e(line)
      e.close()
      return
    stop = w.runs if w.runs >= 0 else len(w.levels)
    e.open("{")
    opened = 1
    for j, lvl in enumerate(w.levels):
      if j > stop:
        break
      p = f"q{j - 1}" if j else "0"
      okp = f"ok{j - 1} && " if j else ""
      if lvl.full and j == 0:
        start = "0" if clo == "0" else f"{clo} > 0 ? {clo} : 0"
        end = "" if chi == "INT64_MAX" else f" && q0 < {chi}"
        e.open(f"for (int64_t q0 = {start}; q0 < {lvl.size}LL{end}; ++q0) {{")
        e("int64_t c0 = q0;")
        opened += 1
      elif lvl.full:
        e.open(f"for (int64_t q{j} = {p} * {lvl.size}LL; q{j} < ({p} + 1) * {lvl.size}LL; "
               f"++q{j}) {{")
        e(f"int64_t c{j} = q{j} - {p} * {lvl.size}LL;")
        opened += 1
      else:
        if lvl.pos:
          e(f"int64_t lo{j} = clamp64((int64_t){lvl.pos}[{p}], 0, {lvl.cap}LL);")
          e(f"int64_t hi{j} = clamp64((int64_t){lvl.pos}[{p} + 1], lo{j}, {lvl.cap}LL);")
        else:
          e(f"int64_t lo{j} = {p} < {lvl.cap}LL ? {p} : {lvl.cap}LL;")
          e(f"int64_t hi{j} = {p} < {lvl.cap}LL ? {p} + 1 : {lvl.cap}LL;")
        if j == 0 and chi != "INT64_MAX":
          e(f"if (lo0 < {clo}) lo0 = {clo};")
          e(f"if (hi0 > {chi}) hi0 = {chi};")
        if j == stop:
          ok = f"ok{j - 1}" if j else "1"
          row = ", ".join(f"c{w.rows[k]}" if w.rows[k] < stop else "0" for k in range(L))
          e.open("{")
          e(f"int64_t rlo = lo{j}, rhi = hi{j}; int ok = {ok}; int64_t row[{L}] = {{{row}}};")
          for line in body:
            e(line)
          e.close()
          break
        e.open(f"for (int64_t q{j} = lo{j}; q{j} < hi{j}; ++q{j}) {{")
        e(f"int64_t c{j} = (int64_t){lvl.crd}[q{j}];")
        opened += 1
      e(f"int ok{j} = {okp}c{j} >= 0 && c{j} < {lvl.size}LL;")
    if stop == len(w.levels):
      last = len(w.levels) - 1
      row = ", ".join(f"c{w.rows[k]}" for k in range(L))
      e.open("{")
      e(f"int64_t e = q{last}; int ok = ok{last}; int64_t row[{L}] = {{{row}}};")
      for line in body:
        e(line)
      e.close()
    for _ in range(opened):
      e.close()

  def extent(self, w: ir.Entries):
    """``olo``, ``ohi``: the outermost positions of the walk."""
    if w.coords is not None:
      self.e(f"int64_t olo = 0, ohi = {w.n}LL;")
    elif w.levels[0].full:
      self.e(f"int64_t olo = 0, ohi = {w.levels[0].size}LL;")
    else:
      lvl = w.levels[0]
      self.e(f"int64_t olo = clamp64((int64_t){lvl.pos}[0], 0, {lvl.cap}LL);")
      self.e(f"int64_t ohi = clamp64((int64_t){lvl.pos}[1], olo, {lvl.cap}LL);")

  # -- statements in a walk ---------------------------------------------------------------------
  def visit(self, s) -> list[str]:
    if isinstance(s, ir.Tally):
      return [f"if (ok) {s.hist}[row[{s.level}] + 1]++;"]
    if isinstance(s, ir.Scatter):
      return ["if (ok) {",
              f"  int64_t slot = {s.next}[row[{s.level}]]++;",
              f"  if (slot < {s.cap}LL) {s.crd}[slot] = (idx_t)row[{s.crd_level}];",
              f"  if (slot < {s.nse}LL) {s.source}[slot] = (idx_t)e;",
              "}"]
    if isinstance(s, ir.Bucket):
      return ["if (ok) {",
              f"  int64_t slot = {s.next}[row[{s.level}]]++;",
              f"  if (slot < {s.n}LL) {{",
              f"    {s.entries}[slot] = (ord_t)e;",
              f"    for (int k = 0; k < {s.width}; ++k) "
              f"{s.rows}[slot * {s.width} + k] = (idx_t)row[k];",
              "  }", "}"]
    if isinstance(s, ir.Gather):
      return [f"if (ok && cnt < {s.n}LL) {{",
              f"  for (int k = 0; k < {s.width}; ++k) {s.rows}[e * {s.width} + k] = "
              "(idx_t)row[k];",
              f"  {s.entries}[cnt++] = (ord_t)e;", "}"]
    if isinstance(s, ir.Emit):
      return ["if (ok) append(&o, e, row);"]
    raise TypeError(f"C printer: not a conversion walk statement; got {s!r}")

  # -- top-level statements --------------------------------------------------------------------
  def constants(self):
    """Constants of the builder, the walks' ranges and the sorts."""
    e = self.e
    for s in self.k.body:
      if isinstance(s, ir.Begin):
        o = s.builder
        L = len(o.levels)
        e(f"#define L {L}")
        e(f"#define N_IN {o.n}LL")
        e(f"#define NSE {o.nse}LL")
        e(f"#define SUMS {int(o.sums)}")
        e(f"static const int DST_KIND[L] = {_ints(_code(v) for v in o.levels)};")
        e(f"static const int DST_UNIQUE[L] = {_ints(v.unique for v in o.levels)};")
        e(f"static const int64_t DST_SIZE[L] = {_ints(v.size for v in o.levels)};")
        e(f"static const int64_t DST_CAP[L] = {_ints(v.cap for v in o.levels)};")
        e(f"static const int64_t DST_PCAP[L] = {_ints(v.pcap for v in o.levels)};")
      if isinstance(s, ir.Loop) and isinstance(s.over, ir.Entries) and s.over.coords:
        e(f"static const int64_t IN_SIZE[] = {_ints(s.over.sizes)};")
        break
    e()

  def builder(self, o: ir.Builder):
    """The builder's buffers from this batch element's outputs."""
    e = self.e
    e("builder o;")
    for k, lvl in enumerate(o.levels):
      e(f"o.pos[{k}] = {lvl.pos or 'NULL'}; o.crd[{k}] = {lvl.crd or 'NULL'};")
    e(f"o.map = {o.map}; o.count = {o.count};")
    e("builder_init(&o);")

  def scratch(self, name: str, bytes_: str) -> str:
    arr = self.arrays[name]
    t = _TYPES[arr.dtype]
    self.e(f"{t}* {name} = ({t}*)scratch({self.slots[name]}, {bytes_});")
    return name

  def one(self):
    """``structure_one(a, b)``: one batch element (0, or -1 when out of memory)."""
    k, e = self.k, self.e
    body = list(k.body)
    e.open("static int structure_one(const structure_args* a, int64_t b) {")
    self.declare()
    for arr in k.scratch:
      if arr.name in self.per_chunk:      # (printed as per-chunk rows: pass_one)
        continue
      bytes_ = f"sizeof({_TYPES[arr.dtype]}) * {arr.per_batch.value}LL"
      self.scratch(arr.name, bytes_)
      e(f"if (!{arr.name}) return -1;")
      if arr.name in self.tallied:
        e(f"memset({arr.name}, 0, {bytes_});")
    i = 0
    while i < len(body):
      s = body[i]
      if isinstance(s, ir.Begin) and i + 1 < len(body) and _is_transpose(body[i + 1]):
        self.transpose_dispatch(body[i + 1])   # (it writes every output: no builder_init)
      if _is_transpose(s):
        self.transpose(s, body[i + 1], body[i + 2])
        i += 3
        continue
      if isinstance(s, ir.Loop) and s.parallel is ir.Parallel.OUTER:
        e("if (pass_one(a, b)) return -1;")
        i += 3                             # (the walk, Pad, Offsets: pass_one)
        continue
      self.stmt(s)
      i += 1
    e("return 0;")
    e.close()
    e()

  def stmt(self, s):
    e = self.e
    if isinstance(s, ir.Begin):
      self.builder(s.builder)
    elif isinstance(s, ir.Seal):
      e("builder_finish(&o);")
    elif isinstance(s, ir.Loop) and isinstance(s.over, ir.SortedRows):
      it = s.over
      e.open(f"for (int64_t i = 0; i < {it.count}[0]; ++i) {{")
      e(f"const int64_t x = (int64_t){it.entries}[i];")
      at = "x" if it.by_entry else "i"
      e(f"int64_t row[{it.width}];")
      e(f"for (int k = 0; k < {it.width}; ++k) row[k] = (int64_t){it.rows}[{at} * {it.width} + k];")
      e("append(&o, x, row);")
      e.close()
    elif isinstance(s, ir.Loop):
      w = s.over
      gather = next((t for t in s.body if isinstance(t, ir.Gather)), None)
      bucket = next((t for t in s.body if isinstance(t, ir.Bucket)), None)
      e.open("{")
      if gather:
        e("int64_t cnt = 0;")
      lines = [line for t in s.body for line in self.visit(t)]
      self.walk(w, "0", "INT64_MAX", lines)
      if gather:
        e(f"{gather.count}[0] = cnt;")
      if bucket:
        e(f"{bucket.count}[0] = {bucket.next}[{bucket.buckets - 1}] < {bucket.n}LL ? "
          f"{bucket.next}[{bucket.buckets - 1}] : {bucket.n}LL;")
      e.close()
    elif isinstance(s, ir.PrefixSum):
      e(f"for (int64_t v = 0; v < {s.size.value}LL; ++v) {s.buffer}[v + 1] += {s.buffer}[v];")
    elif isinstance(s, ir.Tail):
      e(f"const int64_t run = {s.start.buffer}[{s.start.offset.value}];")
      e(f"for (int64_t q = run; q < {s.cap}LL; ++q) {s.crd}[q] = (idx_t){s.pad}LL;")
      e(f"{s.count}[0] = (idx_t)run;")
    elif isinstance(s, ir.SortBuckets):
      n, x = self.size(s.entries), self.extra
      e(f"ord_t* idx = (ord_t*)scratch({x}, sizeof(ord_t) * {n}LL);")
      e(f"ord_t* aux = (ord_t*)scratch({x + 1}, sizeof(ord_t) * {n}LL);")
      e(f"idx_t* rtmp = (idx_t*)scratch({x + 2}, sizeof(idx_t) * {self.size(s.rows)}LL);")
      e("if (!idx || !aux || !rtmp) return -1;")
      e.open(f"for (int64_t v = 0; v < {s.buckets}LL; ++v) {{")
      e(f"int64_t lo = v ? {s.next}[v - 1] : 0, hi = {s.next}[v];")
      e(f"if (hi > {s.count}[0]) hi = {s.count}[0];")
      e(f"if (hi - lo > 1) bucket_sort({s.rows}, {s.entries}, lo, hi, idx, aux, rtmp);")
      e.close()
    elif isinstance(s, ir.RadixSort):
      e(f"ord_t* tmp = (ord_t*)scratch({self.extra}, sizeof(ord_t) * {self.size(s.entries)}LL);")
      hist_len = max((1 << 16) if z > s.hist_cap else z for z in s.sizes)
      e(f"int64_t* hist = (int64_t*)scratch({self.extra + 1}, sizeof(int64_t) * "
        f"{hist_len + 1}LL);")
      e("if (!tmp || !hist) return -1;")
      e(f"ord_t* ord = {s.entries};")
      for key, z in zip(s.keys, s.sizes):
        e(f"sort_by({s.rows}, {key}, {z}LL, {s.count}[0], &ord, &tmp, hist, {s.hist_cap}LL);")
      e(f"if (ord != {s.entries}) memcpy({s.entries}, ord, sizeof(ord_t) * {s.count}[0]);")
    else:
      raise TypeError(f"C printer: not a conversion statement; got {s!r}")

  # -- the counting-sort transpose ------------------------------------------------------------
  def transpose(self, count: ir.Loop, offsets: ir.Offsets, scatter: ir.Loop):
    """Serial, or in chunks (per-chunk histograms; see the module docstring)."""
    e, w = self.e, count.over
    (tally,), (sc,) = count.body, scatter.body
    e.open("{")
    self.walk(w, "0", "INT64_MAX", self.visit(tally))
    e("int64_t run = 0;")
    e.open(f"for (int64_t p = 0; p < {offsets.size}LL; ++p) {{")
    e(f"{offsets.next}[p] = run;")
    e(f"run += {offsets.counts}[p + {offsets.shift}];")
    e(f"{offsets.pos}[p + 1] = (idx_t)(run < {offsets.cap}LL ? run : {offsets.cap}LL);")
    e.close()
    self.walk(w, "0", "INT64_MAX", self.visit(sc))
    e.close()

  def transpose_dispatch(self, count: ir.Loop):
    """A large single batch element sorts in chunks (``transpose_parallel``)."""
    e, w = self.e, count.over
    e.open(f"if (a->batch == 1 && {w.n}LL >= {w.split_at}LL) {{")
    e("int64_t threads = jscorch_num_threads(a->cf);")
    e("if (threads > 1) return transpose_parallel(a, b, threads < 8 ? threads : 8);")
    e.close()

  def transpose_functions(self, count: ir.Loop, offsets: ir.Offsets, scatter: ir.Loop):
    e, w = self.e, count.over
    sc = scatter.body[0]
    rows = offsets.size
    for name, lines in (("transpose_count", ["if (ok) h[row[0]]++;"]),
                        ("transpose_scatter", [
                            "if (ok) {",
                            "  int64_t slot = h[row[0]]++;",
                            f"  if (slot < {sc.cap}LL) {sc.crd}[slot] = (idx_t)row[1];",
                            f"  if (slot < {sc.nse}LL) {sc.source}[slot] = (idx_t)e;",
                            "}"])):
      e.open(f"static void {name}(const void* p, int64_t lo, int64_t hi) {{")
      e("const chunk_args* t = (const chunk_args*)p;")
      e("const structure_args* a = t->a;")
      e("const int64_t b = t->b;")
      self.declare()
      e.open("for (int64_t c = lo; c < hi; ++c) {")
      e(f"int64_t* h = t->counts + c * {rows}LL;")
      self.walk(w, "t->bounds[c]", "t->bounds[c + 1]", lines)
      e.close()
      e.close()
      e()
    self.extent_function(w)
    ret = {a.name: str(a.ret) for a in self.k.outputs}
    e(TRANSPOSE.replace("ROWS", f"{rows}LL").replace("CAP", f"{sc.cap}LL")
      .replace("PAD", f"{w.sizes[1]}LL").replace("POS_RET", ret[offsets.pos])
      .replace("CRD_RET", ret[sc.crd]).replace("MAP_RET", ret[sc.source])
      .replace("COUNT_RET", ret[self.k.outputs[-1].name])
      .replace("SLOT", str(self.extra)))

  def extent_function(self, w: ir.Entries):
    e = self.e
    e.open("static void outer_extent(const structure_args* a, int64_t b, int64_t* lo, "
           "int64_t* hi) {")
    self.declare()
    self.extent(w)
    e("*lo = olo; *hi = ohi;")
    e.close()
    e()

  def first_run_function(self, w: ir.Entries):
    """``first_run(a, b, lo, hi)``: the first entry of the first non-empty run whose
    outermost position is in ``[lo, hi)`` (``PASS_NSE`` if none, or without runs)."""
    e = self.e
    e.open("static int64_t first_run(const structure_args* a, int64_t b, int64_t clo, "
           "int64_t chi) {")
    if w.runs >= 0:
      self.declare({a.name for a in self.k.inputs})
      self.walk(w, "clo", "chi", ["(void)ok; (void)row;",
                                  "if (rlo < rhi) return rlo < PASS_NSE ? rlo : PASS_NSE;"])
    else:
      e("(void)a; (void)b; (void)clo; (void)chi;")
    e("return PASS_NSE;")
    e.close()
    e()

  # -- the order-preserving walk ------------------------------------------------------------------
  def pass_functions(self, loop: ir.Loop, pad: ir.Pad, offsets: ir.Offsets):
    e, w = self.e, loop.over
    hist, copy = loop.body
    e(f"#define PASS_E {hist.levels}")
    e(f"#define PASS_PCAP {offsets.size}LL")
    e(f"#define PASS_NSE {copy.nse}LL")
    e(f"#define PASS_N {len(copy.outs)}")
    e(f"static const int64_t PASS_SIZE[] = {_ints(hist.sizes)};")
    e(f"static const int PASS_LEVEL[] = {_ints(k for _, k, _ in copy.outs)};")
    e(f"static const int64_t PASS_PAD[] = {_ints(z for _, _, z in copy.outs)};")
    e(PASS)
    runs = w.runs >= 0
    e.open("static void pass_walk(const void* p, int64_t lo, int64_t hi) {")
    e("const chunk_args* t = (const chunk_args*)p;")
    e("const structure_args* a = t->a;")
    e("const int64_t b = t->b;")
    self.declare(({a.name for a in self.k.inputs}))
    e("idx_t* out_crd[PASS_N + 1];")
    for i, (crd, _, _) in enumerate(copy.outs):
      ret = self.arrays[crd].ret
      e(f"out_crd[{i}] = (idx_t*)a->out[{ret}] + b * PASS_NSE;")
    e.open("for (int64_t c = lo; c < hi; ++c) {")
    e("int64_t* h = t->counts + c * PASS_STRIDE;")
    e("int64_t here = 0;                 /* (PASS_E == 0: one parent, counted in a register) */")
    e("int64_t first = -1, cursor = 0;   /* every entry in [first, cursor) is written */")
    e("const int64_t stop = t->stops[c]; (void)stop;")
    node = ["(void)ok;", "int64_t node = 0;", "int in = 1;",
            "for (int k = 0; k < PASS_E; ++k) {",
            "  in &= row[k] >= 0 && row[k] < PASS_SIZE[k];",
            "  node = node * PASS_SIZE[k] + row[k];", "}"]
    if runs:
      body = node + [
          "if (PASS_E == 0) here += rhi - rlo;", "else if (in) h[node] += rhi - rlo;",
          "if (rhi > PASS_NSE) rhi = PASS_NSE;",
          "if (rlo < rhi) {",
          "  if (first < 0) first = cursor = rlo;",
          "  if (rlo > cursor) pass_pad(out_crd, cursor, rlo);",
          "  for (int i = 0; i < PASS_N; ++i) {",
          "    int64_t v = row[PASS_LEVEL[i]], size = PASS_PAD[i];",
          "    const idx_t x = (idx_t)(v >= 0 && v < size ? v : size);",
          "    fill_run(out_crd[i], rlo, rhi, x, stop);",
          "  }",
          "  if (rhi > cursor) cursor = rhi;", "}"]
    else:
      body = node + [
          "if (PASS_E == 0) here += in;", "else if (in) h[node]++;",
          "if (PASS_N && e < PASS_NSE) {",
          "  if (first < 0) first = cursor = e;",
          "  if (e > cursor) pass_pad(out_crd, cursor, e);",
          "  if (e >= cursor) cursor = e + 1;",
          "  for (int i = 0; i < PASS_N; ++i) {",
          "    int64_t v = row[PASS_LEVEL[i]], size = PASS_PAD[i];",
          "    out_crd[i][e] = (idx_t)(v >= 0 && v < size ? v : size);",
          "  }", "}"]
    self.walk(w, "t->bounds[c]", "t->bounds[c + 1]", body)
    e("if (PASS_E == 0) h[0] = here;")
    e("t->cover[2 * c] = first < 0 ? 0 : first;")
    e("t->cover[2 * c + 1] = first < 0 ? 0 : cursor;")
    e.close()
    e.close()
    e()
    self.first_run_function(w)
    self.extent_function(w)
    e(PASS_ONE.replace("SPLIT", f"{w.split_at}LL").replace("N_ENTRIES", f"{w.n}LL")
      .replace("SLOT", str(self.extra)).replace("POS_RET", str(self.arrays[offsets.pos].ret)))

  # -- the kernel -----------------------------------------------------------------------------
  def source(self) -> str:
    k, e = self.k, self.e
    e(f"/* jscorch structure kernel {k.name}")
    for key, text in k.notes:
      e(f" *   {key}: {text}")
    e(" */")
    e(RUNTIME)
    e(f"typedef {I_TYPES[k.index_dtype]} idx_t;")
    e(f"typedef {I_TYPES[k.source_dtype]} sidx_t;")
    e(f"typedef {I_TYPES[k.entry_dtype]} ord_t;")
    n_in, n_out = len(k.inputs), len(k.outputs)
    e(f"#define N_ARGS {n_in}")
    e(f"#define N_RETS {n_out}")
    self.extra = len(k.scratch)
    e(f"#define N_SLOTS {self.extra + 3}")
    e(SCRATCH)
    self.constants()
    body = list(k.body)
    self.per_chunk = set()
    if any(isinstance(s, ir.Begin) for s in body):
      e(BUILDER)
    for i, s in enumerate(body):
      if isinstance(s, ir.Loop) and s.parallel is ir.Parallel.OUTER:
        if isinstance(s.body[0], ir.Tally):
          self.transpose_functions(s, body[i + 1], body[i + 2])
        else:
          self.pass_functions(s, body[i + 1], body[i + 2])
          self.per_chunk.add(s.body[0].hist)
        break
    sb = next((s for s in body if isinstance(s, ir.SortBuckets)), None)
    if sb:
      e(BUCKET_SORT.replace("N_KEYS", str(len(sb.keys))).replace("KEYS", _ints(sb.keys))
        .replace("WIDTH", str(sb.width)))
    if any(isinstance(s, ir.RadixSort) for s in body):
      e(RADIX.replace("WIDTH", str(next(s.width for s in body if isinstance(s, ir.RadixSort)))))
    self.tallied = {t.hist for s in body if isinstance(s, ir.Loop) for t in s.body
                    if isinstance(t, ir.Tally)}
    self.one()
    e(BATCH.replace("KERNEL_NAME", k.name))
    return e.text() + "\n"


def generate(kernel: ir.Assembly) -> str:
  """The C source of conversion ``kernel``: one FFI handler named ``kernel.name``."""
  return _Printer(kernel).source()


def _is_transpose(s) -> bool:
  """Whether ``s`` is the count loop of a counting-sort transpose."""
  return isinstance(s, ir.Loop) and s.parallel is ir.Parallel.OUTER and \
      isinstance(s.body[0], ir.Tally)
