"""A numpy interpreter of the loop-nest IR: a test oracle for tiny shapes.

:func:`interpret` runs a :class:`~jscorch.primitives.loopnest.Kernel` statement by
statement on host buffers, with the semantics every printer must keep (it is to
the C printer what Pallas's ``hlo_interpreter`` is to its lowerings):

* iterators bind their coordinate and positions; a coordinate outside its
  dimension (padding) skips the iteration, and :class:`~.loopnest.SkipUnless`
  skips the rest of the innermost *loop* iteration (a block — the first level, a
  singleton level — passes the skip to its enclosing loop, as C's ``continue``);
* in a vector kernel accumulators and lane-varying loads are numpy vectors along
  the vector index, whose coordinate reads as 0 in offsets;
* a ``Race.STORE`` output starts as NaN, so a location the plan fails to write shows.

:func:`run_assembly` runs a structure kernel (:class:`~.loopnest.Assembly`: a union's
count and fill passes, run-time sizes) the same way, returning all its outputs.

It is slow (a Python loop per stored entry) and only meant for tests.

Example:
  >>> import numpy as np
  >>> from jscorch.primitives.layout import Layout
  >>> from jscorch.primitives.formats import CSR
  >>> from jscorch.primitives.einsum_spec import EinsumSpec, Operand
  >>> from jscorch.primitives.plan import KernelPlan, lower
  >>> lay = Layout(CSR, (2, 3), 3)
  >>> spec = EinsumSpec((Operand((0, 1), lay), Operand((1,))), out=(0,),
  ...                   sizes=((0, 2), (1, 3)))
  >>> k = lower(KernelPlan(spec, lay, (0, 1), 1, np.dtype(np.float32)))
  >>> data, pos, crd = np.array([1., 2., 3.]), np.array([0, 2, 3]), np.array([0, 2, 1])
  >>> interpret(k, [data, pos, crd, np.array([1., 10., 100.])])
  array([201.,  30.])
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import loopnest as ir


class _Skip(Exception):
  """``continue``: abandon the rest of the innermost loop iteration."""


def _pos(src, level) -> str:
  return f"p{level}_{src}"


class _Interpreter:

  def __init__(self, k: ir.Kernel, flat: Sequence):
    self.k = k
    self.buf = {b.name: np.asarray(flat[b.arg], np.float64 if b.role is ir.Role.VALUES
                                   else np.int64).ravel() for b in k.inputs}
    self.vec = k.vector
    self.vname = k.vector.coord.name if k.vector and k.vector.coord else None
    self.env: dict = {}

  # -- expressions ----------------------------------------------------------------------
  def ev(self, x):
    env = self.env
    if isinstance(x, ir.Const):
      return x.value
    if isinstance(x, ir.Var):
      return env[x.name]
    if isinstance(x, ir.Coord):
      return 0 if x.name == self.vname else env[x.name]
    if isinstance(x, ir.Pos):
      return env[_pos(x.src, x.level)]
    if isinstance(x, ir.Acc):
      return env[x.name]
    if isinstance(x, ir.Affine):
      return sum(int(self.ev(e)) * c for e, c in x.terms)
    if isinstance(x, ir.Load):
      off = int(self.ev(x.offset))
      b = self.buf[x.buffer]
      if x.lanes and self.vec:
        return b[off:off + self.vec.size]
      return b[off]
    if isinstance(x, ir.Mul):
      out = 1.0
      for f in x.factors:
        out = out * self.ev(f)
      return out
    if isinstance(x, ir.Add):
      return sum(self.ev(t) for t in x.terms)
    raise TypeError(f"interpret: not an expression; got {x!r}")

  # -- statements -------------------------------------------------------------------------
  def run(self, stmts):
    for s in stmts:
      self.stmt(s)

  def stmt(self, s):
    env = self.env
    if isinstance(s, ir.Loop):
      self.loop(s.over, s.body)
    elif isinstance(s, ir.Let):
      env[s.name] = int(self.ev(s.value))
    elif isinstance(s, ir.Locate):
      env[_pos(s.src, s.level)] = int(self.ev(s.value))
    elif isinstance(s, ir.Zero):
      env[s.name] = np.zeros(self.vec.size) if self.vec else 0.0
    elif isinstance(s, ir.Accumulate):
      value = self.ev(s.value)
      if isinstance(s.out, ir.Acc):
        env[s.out.name] = env[s.out.name] + value
        return
      out = self.out[s.out.buffer]
      off = int(self.ev(s.out.offset))
      at = slice(off, off + self.vec.size) if self.vec else off
      out[at] = value if s.race is ir.Race.STORE else out[at] + value
    elif isinstance(s, ir.SkipUnless):
      if self.ev(s.a) != self.ev(s.b):
        raise _Skip
    elif isinstance(s, ir.Prefetch):
      pass
    else:
      raise TypeError(f"interpret: not a statement; got {s!r}")

  def each(self, body):
    """One loop iteration: a skip ends just this iteration."""
    try:
      self.run(body)
    except _Skip:
      pass

  def coord(self, name, c, size):
    """Binds a stored coordinate; padding (out of range) skips."""
    self.env[name] = c
    if not 0 <= c < size:
      raise _Skip

  def segment(self, it: ir.Segment):
    b = self.env["b"]
    parent = self.env[_pos(it.src, it.level - 1)] if it.level else 0
    pos = self.buf[it.pos]
    at = b * (it.parent_cap + 1) + parent
    return int(pos[at]), min(int(pos[at + 1]), it.cap)

  def loop(self, it, body):
    env = self.env
    if isinstance(it, ir.Range):
      if it.unit:              # a block bound to the unit: a skip leaves it
        env[it.coord.name] = env["q"]
        for s in it.srcs:
          env[_pos(s, it.level)] = env["q"]
        self.run(body)
        return
      for c in range(it.size):
        env[it.coord.name] = c
        for s in it.srcs:
          env[_pos(s, it.level)] = env[_pos(s, it.level - 1)] * it.size + c
        self.each(body)
    elif isinstance(it, ir.Segment):
      b = env["b"]
      crd = self.buf[it.crd]
      if it.unit:
        if env["q"] < int(self.buf[it.pos][b * (it.parent_cap + 1) + 1]):
          env[_pos(it.src, 0)] = p = env["q"]
          self.coord(it.coord.name, int(crd[b * it.cap + p]), it.size)
          self.run(body)
        return
      lo, hi = self.segment(it)
      for p in range(lo, hi):
        env[_pos(it.src, it.level)] = p
        try:
          self.coord(it.coord.name, int(crd[b * it.cap + p]), it.size)
          self.run(body)
        except _Skip:
          pass
    elif isinstance(it, ir.Single):
      p = env[_pos(it.src, it.level - 1)]
      env[_pos(it.src, it.level)] = p
      self.coord(it.coord.name, int(self.buf[it.crd][env["b"] * it.cap + p]), it.size)
      self.run(body)
    elif isinstance(it, ir.Intersect):
      self.intersect(it, body)
    elif isinstance(it, ir.TupleIntersect):
      self.tuple_intersect(it, body)
    else:
      raise NotImplementedError(f"interpret: no loop for {type(it).__name__}")

  def intersect(self, it: ir.Intersect, body):
    env, b = self.env, self.env["b"]
    bounds = [self.segment(s) for s in it.parts]
    q = [lo for lo, _ in bounds]
    while all(q[n] < bounds[n][1] for n in range(len(q))):
      k = [int(self.buf[s.crd][b * s.cap + q[n]]) for n, s in enumerate(it.parts)]
      c = max(k)
      if all(x == c for x in k):
        if not 0 <= c < it.parts[0].size:
          break
        env[it.coord.name] = c
        for n, s in enumerate(it.parts):
          env[_pos(s.src, s.level)] = q[n]
        self.each(body)
        q = [x + 1 for x in q]
      else:
        q = [x + 1 if k[n] < c else x for n, x in enumerate(q)]

  def tuple_intersect(self, it: ir.TupleIntersect, body):
    env, b = self.env, self.env["b"]
    L = len(it.coords)

    def key(s, p):
      return tuple(int(self.buf[lv.crd][b * lv.cap + p]) for lv in it.parts[s])

    bounds = [self.segment(parts[0]) for parts in it.parts]
    q = [lo for lo, _ in bounds]
    S = range(len(q))
    while all(q[s] < bounds[s][1] for s in S):
      keys = [key(s, q[s]) for s in S]
      m = max(keys)
      if any(k != m for k in keys):
        q = [x + 1 if keys[s] != m else x for s, x in enumerate(q)]
        continue
      ends = []
      for s in S:
        e = q[s] + 1
        while e < bounds[s][1] and key(s, e) == m:
          e += 1
        ends.append(e)
      if all(0 <= c < it.parts[0][l].size for l, c in enumerate(m)):
        for l, c in enumerate(it.coords):
          env[c.name] = m[l]
        for combo in np.ndindex(*[ends[s] - q[s] for s in S]):
          for s in S:
            env[_pos(s, L - 1)] = q[s] + combo[s]
          self.each(body)
      q = ends

  def transpose(self, t: ir.Transpose):
    pos, crd = self.buf[t.pos], self.buf[t.crd]
    tpos = np.zeros(t.cols + 1, np.int64)
    entries = [(int(crd[p]), i, p) for i in range(t.rows)
               for p in range(int(pos[i]), min(int(pos[i + 1]), t.nse))
               if 0 <= int(crd[p]) < t.cols]
    for c, _, _ in entries:
      tpos[c + 1] += 1
    tpos = np.cumsum(tpos)
    entries.sort(key=lambda e: e[0])          # stable: rows stay in order per column
    self.buf[t.pos] = tpos
    self.buf[t.crd] = np.array([i for _, i, _ in entries] + [0], np.int64)
    self.buf["perm"] = np.array([p for _, _, p in entries] + [0], np.int64)

  def __call__(self) -> np.ndarray:
    k = self.k
    fill = np.nan if k.race is ir.Race.STORE else 0.0
    self.out = {b.name: np.full(b.size, fill) for b in k.outputs}
    for t in k.prologue:
      self.transpose(t)
    units = k.body.over
    for u in range(units.size):
      self.env = {"b": u // units.width, "q": u % units.width}
      stride = 1
      for d in reversed(range(len(units.batch))):
        self.env[units.coords[d].name] = (self.env["b"] // stride) % units.batch[d]
        stride *= units.batch[d]
      self.each(k.body.body)
    (out,) = self.out.values()
    return out


def interpret(kernel: ir.Kernel, flat: Sequence) -> np.ndarray:
  """Runs ``kernel`` on host buffers; returns its output, flat, in float64.

  Args:
    kernel: the loop nest.
    flat: the einsum's flat inputs (values and index buffers), as the kernel's
      :class:`~.loopnest.Buffer` ``arg`` positions number them.
  """
  return _Interpreter(kernel, flat)()


# -- structure kernels (loopnest.Assembly) ---------------------------------------------------
class _Assembler:
  """Runs an :class:`~.loopnest.Assembly` on host buffers, one batch element at a time."""

  def __init__(self, k: ir.Assembly, inputs: Sequence, outputs: Sequence):
    self.k = k
    self.arrays = {a.name: np.asarray(inputs[a.arg]) for a in k.inputs}
    self.arrays.update({a.name: np.array(outputs[a.ret]) for a in k.outputs})
    params = np.asarray(inputs[len(k.inputs)])
    self.env: dict = {}
    for s in k.sizes:
      self.env[s.name] = int(params[s.param]) if s.buffer is None else \
          self.arrays[s.buffer].shape[-1] + s.add
    shape = self.arrays[k.batch].shape
    self.batch = int(np.prod(shape[:-1], dtype=np.int64))

  def ev(self, x) -> int:
    if isinstance(x, ir.Const):
      return x.value
    if isinstance(x, (ir.Var, ir.Coord)):
      return self.env[x.name]
    if isinstance(x, ir.Load):
      return int(self.buf[x.buffer][self.ev(x.offset)])
    if isinstance(x, ir.Add):
      return sum(self.ev(t) for t in x.terms)
    if isinstance(x, ir.Mul):
      return int(np.prod([self.ev(f) for f in x.factors]))
    raise TypeError(f"interpret: not a structure-kernel expression; got {x!r}")

  def segment(self, p: ir.RowSegment, r: int, link) -> list[int]:
    """``[lo, hi]`` of part ``p``'s row of output row ``r``, padding at its ends trimmed."""
    env, pos, crd = self.env, self.buf[p.pos], self.buf[p.crd]
    lo = hi = 0
    row = r - env[p.row_off.name]
    if 0 <= row < env[p.rows.name]:
      lo, hi = max(int(pos[row]), 0), min(int(pos[row + 1]), env[p.cap.name])
      hi = max(hi, lo)
    while lo < hi and crd[lo] < 0:
      self.unlink(link, lo)
      lo += 1
    while hi > lo and crd[hi - 1] >= env[p.cols.name]:
      self.unlink(link, hi - 1)
      hi -= 1
    return [lo, hi]

  def unlink(self, link, p: int):
    if link is not None:
      self.buf[link.dest][self.ev(link.at) + p] = self.env[link.none.name]

  def leaf(self, s, q: int, p: int | None):
    """Statement ``s`` at leaf ``q``; ``p`` the part's entry there, None where it has none."""
    env = self.env
    if isinstance(s, ir.Link):
      if s.dest and p is not None:
        self.buf[s.dest][self.ev(s.at) + p] = q
      if s.source and q < env[s.none.name]:
        self.buf[s.source][q] = env[s.cap.name] if p is None else p
    elif isinstance(s, ir.Fold):
      blk = env[s.block.name]
      out = self.buf[s.out][q * blk:(q + 1) * blk]
      v = self.buf[s.values][p * blk:(p + 1) * blk] if p is not None else np.zeros_like(out)
      out[...] = v if s.first else out + v

  def union(self, u: ir.Union, body):
    env, r = self.env, self.env["r"]
    links = {s.src: s for s in body if isinstance(s, ir.Link) and s.dest}
    seg = [self.segment(p, r, links.get(p.src)) for p in u.parts]

    def head(k):
      p = u.parts[k]
      return int(self.buf[p.crd][seg[k][0]]) + env[p.col_off.name]

    n = 0
    while any(lo < hi for lo, hi in seg):
      c = min(head(k) for k in range(len(seg)) if seg[k][0] < seg[k][1])
      hit = [seg[k][0] < seg[k][1] and head(k) == c for k in range(len(seg))]
      for s in body:
        if isinstance(s, ir.Append):
          q = self.ev(s.start) + n
          if q < env[s.cap.name]:
            self.buf[s.crd][q] = c
        elif isinstance(s, (ir.Link, ir.Fold)):
          self.leaf(s, q, seg[s.src][0] if hit[s.src] else None)
      for k in range(len(seg)):
        seg[k][0] += hit[k]
      n += 1
    for s in body:
      if isinstance(s, ir.Count):
        self.buf[s.out][self.ev(s.at)] = n

  def stmt(self, s):
    env, buf = self.env, self.buf
    if isinstance(s, ir.Loop):          # over Rows: its body is one loop over a Union
      (inner,) = s.body
      for r in range(self.ev(s.over.size)):
        env[s.over.coord.name] = r
        self.union(inner.over, inner.body)
    elif isinstance(s, ir.Unreached):
      p, cap = s.part, env[s.part.cap.name]
      pos, at = buf[p.pos], self.ev(s.at)
      lo = min(max(int(pos[0]), 0), cap)
      hi = min(max(int(pos[env[p.rows.name]]), lo), cap)
      buf[s.dest][at:at + lo] = env[s.none.name]
      buf[s.dest][at + hi:at + cap] = env[s.none.name]
    elif isinstance(s, ir.PrefixSum):
      n = env[s.size.name]
      buf[s.buffer][0] = 0
      buf[s.buffer][:n + 1] = np.cumsum(buf[s.buffer][:n + 1])
    elif isinstance(s, ir.Finalize):
      start, n, cap = buf[s.start], env[s.rows.name], env[s.cap.name]
      buf[s.pos][:n + 1] = np.minimum(start[:n + 1], cap)
      for q in range(int(start[n]), cap):
        buf[s.crd][q] = env[s.pad.name]
        for leaf in s.leaves:
          self.leaf(leaf, q, None)
      buf[s.count][0] = start[n]
    else:
      raise TypeError(f"interpret: not a structure-kernel statement; got {s!r}")

  def __call__(self) -> list[np.ndarray]:
    k = self.k
    flat = {name: a.reshape(-1) for name, a in self.arrays.items()}
    scratch = {a.name: np.zeros(self.ev(a.per_batch), np.int64) for a in k.scratch}
    for b in range(self.batch):
      self.buf = dict(scratch)
      for a in (*k.inputs, *k.outputs):
        n = self.ev(a.per_batch)
        self.buf[a.name] = flat[a.name][b * n:(b + 1) * n]
      for s in k.body:
        self.stmt(s)
    return [self.arrays[a.name] for a in k.outputs]


# -- conversion kernels (an Assembly with constant sizes: convert_loops) -------------------
class _Converter(_Assembler):
  """Runs a conversion kernel (:mod:`~.structure.convert_loops`) one batch element at a
  time, entry by entry, as its IR says (the C kernel prints the same nodes)."""

  def __init__(self, k: ir.Assembly, inputs: Sequence, outputs: Sequence):
    self.k = k
    self.arrays = {a.name: np.asarray(inputs[a.arg]) for a in k.inputs}
    self.arrays.update({a.name: np.array(outputs[a.ret]) for a in k.outputs})
    self.env = {}
    first = k.outputs[0]
    self.batch = self.arrays[first.name].size // max(self.ev(first.per_batch), 1)

  # -- the walk over the source ---------------------------------------------------------
  def walk(self, w: ir.Entries):
    """Yields ``(lo, hi, row, ok)`` for each entry (``hi = lo + 1``) or run."""
    if w.coords is not None:
      co = self.buf[w.coords].reshape(w.n, len(w.rows))
      for e in range(w.n):
        row = [int(c) for c in co[e]]
        yield e, e + 1, row, all(0 <= c < s for c, s in zip(row, w.sizes))
      return
    last = len(w.levels) - 1 if w.runs < 0 else w.runs

    def level(j, p, cs, ok):
      lvl = w.levels[j]
      if lvl.full:
        lo, hi = p * lvl.size, (p + 1) * lvl.size
      elif lvl.pos:
        pos = self.buf[lvl.pos]
        lo = min(max(int(pos[p]), 0), lvl.cap)
        hi = min(max(int(pos[p + 1]), lo), lvl.cap)
      else:
        lo, hi = min(p, lvl.cap), (p + 1 if p < lvl.cap else lvl.cap)
      if j == w.runs:
        row = [cs[w.rows[k]] if w.rows[k] < j else 0 for k in range(len(w.rows))]
        yield lo, hi, row, ok
        return
      for q in range(lo, hi):
        c = q - p * lvl.size if lvl.full else int(self.buf[lvl.crd][q])
        ok_q = ok and 0 <= c < lvl.size
        if j == last:
          yield q, q + 1, [(cs + [c])[w.rows[k]] for k in range(len(w.rows))], ok_q
        else:
          yield from level(j + 1, q, cs + [c], ok_q)

    yield from level(0, 0, [], True)

  def sorted_rows(self, it: ir.SortedRows):
    rows, order = self.buf[it.rows], self.buf[it.entries]
    for i in range(int(self.buf[it.count][0])):
      e = int(order[i])
      at = (e if it.by_entry else i) * it.width
      yield e, e + 1, [int(c) for c in rows[at:at + it.width]], True

  # -- statements in a walk -------------------------------------------------------------
  def counting_sort(self, s, e: int, row: list):
    """:class:`~.loopnest.Tally`, :class:`~.loopnest.Scatter` or :class:`~.loopnest.Bucket`
    of entry ``e`` (in range)."""
    buf = self.buf
    if isinstance(s, ir.Tally):
      buf[s.hist][row[s.level] + 1] += 1
      return
    slot = int(buf[s.next][row[s.level]])
    buf[s.next][row[s.level]] += 1
    if isinstance(s, ir.Scatter):
      if slot < s.cap:
        buf[s.crd][slot] = row[s.crd_level]
      if slot < s.nse:
        buf[s.source][slot] = e
    else:
      if slot < s.n:
        buf[s.entries][slot] = e
        buf[s.rows][slot * s.width:(slot + 1) * s.width] = row
      buf[s.count][0] = min(int(buf[s.next][s.buckets - 1]), s.n)

  def visit(self, s, lo: int, hi: int, row: list, ok: bool):
    buf = self.buf
    if isinstance(s, (ir.Tally, ir.Scatter, ir.Bucket)):
      if ok:
        self.counting_sort(s, lo, row)
    elif isinstance(s, ir.Gather):
      m = int(buf[s.count][0])
      if ok and m < s.n:
        buf[s.rows][lo * s.width:(lo + 1) * s.width] = row
        buf[s.entries][m] = lo
        buf[s.count][0] = m + 1
    elif isinstance(s, ir.Histogram):
      node, inside = 0, True
      for k in range(s.levels):
        inside &= 0 <= row[k] < s.sizes[k]
        node = node * s.sizes[k] + row[k]
      if inside:
        buf[s.hist][node] += hi - lo
    elif isinstance(s, ir.Copy):
      for q in range(lo, min(hi, s.nse)):
        self.written[q] = True
        for crd, k, size in s.outs:
          buf[crd][q] = row[k] if 0 <= row[k] < size else size
    elif isinstance(s, ir.Emit):
      self.emit(s.builder, lo, row)
    else:
      raise TypeError(f"interpret: not a conversion statement; got {s!r}")

  # -- the destination, entry by entry ----------------------------------------------------
  def link(self, o: ir.Builder, e: int, slot: int):
    if o.sums:
      self.buf[o.map][e] = slot
      self.linked[e] = True
    elif slot < o.nse:
      self.buf[o.map][slot] = e

  def emit(self, o: ir.Builder, e: int, row: list):
    st, buf = self.state, self.buf
    if o.sums and st["prev"] == row:
      self.link(o, e, st["slot"])
      return
    st["prev"], st["rows"] = list(row), st["rows"] + 1
    node = 0
    for k, lvl in enumerate(o.levels):
      c = row[k]
      if lvl.full:
        node = node * lvl.size + c
      elif lvl.pos:
        cnt, last = st["cnt"], st["last"]
        if not lvl.unique or cnt[k] == 0 or last[k][:2] != (c, node):
          child = cnt[k]
          cnt[k] += 1
          if child < lvl.cap:
            buf[lvl.crd][child] = c
          if node < lvl.pcap:
            buf[lvl.pos][node + 1] += 1
          last[k] = (c, node, child)
        node = last[k][2]
      elif node < lvl.cap:
        buf[lvl.crd][node] = c
    st["slot"] = min(node, o.nse)
    self.link(o, e, st["slot"])

  def begin(self, o: ir.Builder):
    buf = self.buf
    for lvl in o.levels:
      if lvl.pos:
        buf[lvl.pos][:] = 0
      if lvl.branchless:
        buf[lvl.crd][:] = lvl.size
    if not o.sums:
      buf[o.map][:] = o.n
    self.linked = np.zeros(o.n, bool)
    self.state = {"prev": None, "rows": 0, "slot": o.nse, "cnt": [0] * len(o.levels),
                  "last": [None] * len(o.levels)}

  def seal(self, o: ir.Builder):
    buf, count = self.buf, -1
    for k, lvl in enumerate(o.levels):
      if not lvl.pos:
        continue
      pos = buf[lvl.pos]
      pos[1:] = np.minimum(np.cumsum(pos[1:].astype(np.int64)), lvl.cap)
      buf[lvl.crd][self.state["cnt"][k]:] = lvl.size
      count = self.state["cnt"][k]
    if o.sums:
      buf[o.map][~self.linked] = o.nse
    buf[o.count][0] = self.state["rows"] if count < 0 else count

  # -- statements of one batch element ------------------------------------------------------
  def stmt(self, s):
    buf = self.buf
    if isinstance(s, ir.Loop):
      rows = self.sorted_rows(s.over) if isinstance(s.over, ir.SortedRows) else \
          self.walk(s.over)
      for lo, hi, row, ok in rows:
        for t in s.body:
          self.visit(t, lo, hi, row, ok)
    elif isinstance(s, ir.Begin):
      self.begin(s.builder)
    elif isinstance(s, ir.Seal):
      self.seal(s.builder)
    elif isinstance(s, ir.PrefixSum):
      n = self.ev(s.size)
      buf[s.buffer][0] = 0
      buf[s.buffer][:n + 1] = np.cumsum(buf[s.buffer][:n + 1])
    elif isinstance(s, ir.Offsets):
      counts = buf[s.counts][s.shift:s.shift + s.size].astype(np.int64)
      run = np.cumsum(counts)
      if s.next:
        buf[s.next][:s.size] = run - counts
      buf[s.pos][0] = 0
      buf[s.pos][1:s.size + 1] = np.minimum(run, s.cap)
    elif isinstance(s, ir.Tail):
      start = self.ev(s.start)
      buf[s.crd][start:s.cap] = s.pad
      buf[s.count][0] = start
    elif isinstance(s, ir.SortBuckets):
      self.sort_buckets(s)
    elif isinstance(s, ir.RadixSort):
      m = int(buf[s.count][0])
      order = buf[s.entries][:m].astype(np.int64)
      rows = buf[s.rows].reshape(-1, s.width)
      for k in s.keys:                         # stable passes, least significant first
        order = order[np.argsort(rows[order, k], kind="stable")]
      buf[s.entries][:m] = order
    elif isinstance(s, ir.Pad):
      for crd, _, size in s.copy.outs:
        buf[crd][:s.copy.nse][~self.written] = size
    else:
      raise TypeError(f"interpret: not a conversion statement; got {s!r}")

  def sort_buckets(self, s: ir.SortBuckets):
    buf, m = self.buf, int(self.buf[s.count][0])
    rows, order, ends = buf[s.rows].reshape(-1, s.width), buf[s.entries], buf[s.next]
    for v in range(s.buckets):
      lo, hi = (int(ends[v - 1]) if v else 0), min(int(ends[v]), m)
      if hi - lo > 1:
        local = np.arange(lo, hi)
        for k in s.keys:
          local = local[np.argsort(rows[local, k], kind="stable")]
        rows[lo:hi], order[lo:hi] = rows[local].copy(), order[local].copy()

  def __call__(self) -> list[np.ndarray]:
    k = self.k
    flat = {name: a.reshape(-1) for name, a in self.arrays.items()}
    for b in range(self.batch):
      self.buf = {a.name: np.zeros(self.ev(a.per_batch), np.int64) for a in k.scratch}
      self.written = np.zeros(self._nse(), bool)
      for a in (*k.inputs, *k.outputs):
        n = self.ev(a.per_batch)
        self.buf[a.name] = flat[a.name][b * n:(b + 1) * n]
      for s in k.body:
        self.stmt(s)
    return [self.arrays[a.name] for a in k.outputs]

  def _nse(self) -> int:
    pads = [s for s in self.k.body if isinstance(s, ir.Pad)]
    return pads[0].copy.nse if pads else 0


def run_assembly(kernel: ir.Assembly, inputs: Sequence, outputs: Sequence) -> list[np.ndarray]:
  """Runs structure kernel ``kernel``; returns its outputs (copies of ``outputs``, filled).

  Args:
    kernel: the loop nest (e.g. :func:`jscorch.primitives.structure.union_loops.lower`).
    inputs: the kernel's arguments as numpy arrays, in order, then the int64 params.
    outputs: arrays of the results' shapes and dtypes (their contents are overwritten
      where the kernel writes; a C kernel leaves the rest unspecified).
  """
  run = _Assembler if kernel.sizes else _Converter      # (constant sizes: a conversion)
  return run(kernel, inputs, outputs)()
