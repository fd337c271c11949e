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
