"""The Pallas backend's printer: a :class:`~jscorch.primitives.loopnest.Kernel` as a kernel body.

Where the C printer writes text, this one *traces*: visiting the IR inside a Pallas
kernel, it emits JAX operations on the kernel's refs. It decides nothing the planner
decided (loop order, owner units, race, vector index, hoisting); its own choices are
how to print them on a GPU or TPU:

* the outer :class:`Units` loop runs units ``lo .. hi`` of one program (the caller
  gives each program a range of units balanced by stored entries);
* :class:`Range` prints a ``fori_loop`` (a unit level binds ``q``), :class:`Segment`
  a ``fori_loop`` over ``pos[p'] .. min(pos[p'+1], cap)`` whose body runs under a
  ``cond`` skipping padding coordinates (``>= size``); accumulators are the loops'
  carries;
* the vector index is a row of lanes: a lane-varying :class:`Load` reads one row of
  its buffer viewed as ``[rows, width]`` (:func:`views`; rows padded to a power of two
  or to 128 lanes by the caller), accumulators are rows, and an output
  :class:`Accumulate` stores (``Race.STORE``) or adds (``ACCUMULATE``) a row;
* a loop over a summed free index whose body only accumulates a product of loads
  contiguous in that index (a sampled product's dot product) prints as one row per
  load and a lane sum (:func:`reductions`), else as a scalar loop;
* :class:`Prefetch` prints nothing (a hint for CPU caches).

Anything else (co-iteration, singletons, joins, repeated indices) is refused by
:func:`check` with a key of :data:`jscorch.primitives.backends.pallas.backend.FALLBACKS`.

Example:
  >>> import numpy as np
  >>> from jscorch.primitives.layout import Layout
  >>> from jscorch.primitives.formats import CSR
  >>> from jscorch.primitives.einsum_spec import EinsumSpec, Operand
  >>> from jscorch.primitives.plan import KernelPlan, lower
  >>> lay = Layout(CSR, (6, 7), 20)
  >>> spec = EinsumSpec((Operand((0, 1), lay), Operand((1, 2))), out=(0, 2),
  ...                   sizes=((0, 6), (1, 7), (2, 16)))
  >>> k = lower(KernelPlan(spec, lay, (0, 1), 1, np.dtype(np.float32)))
  >>> check(k, scalar_loads=True), views(k)
  (None, {'x1': 16, 'out': 16})
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ... import loopnest as ir


class Unsupported(Exception):
  """A kernel the printer does not print; ``args[0]`` is the fallback reason."""


# -- analysis: which loops print as lane reductions, which buffers are viewed as rows ------
def reductions(k: ir.Kernel) -> dict[str, int]:
  """``{coordinate: size}`` of the loops over a summed free index that print as a lane
  sum: a :class:`Range` without structures whose body is one :class:`Accumulate` into
  an accumulator, every load reading the index contiguously (stride 1, the other
  strides multiples of its size) or not at all. Only in scalar kernels."""
  if k.vector is not None:
    return {}
  out = {}
  for loop in ir.loops(k.body):
    it = loop.over
    if not isinstance(it, ir.Range) or it.srcs or len(loop.body) != 1:
      continue
    (s,) = loop.body
    if not isinstance(s, ir.Accumulate) or not isinstance(s.out, ir.Acc):
      continue
    loads = [x for x in _exprs(s.value) if isinstance(x, ir.Load)]
    if all(_row_of(x.offset, it.coord.name, it.size) is not None for x in loads
           if it.coord.name in _coords(x.offset)):
      out[it.coord.name] = it.size
  return out


def views(k: ir.Kernel) -> dict[str, int]:
  """``{buffer: width}`` of the buffers read or written a row at a time (viewed as
  ``[size // width, width]``): along the vector index, or a reduction's index.

  Raises:
    Unsupported: a buffer read along two indices of different sizes (``"pallas: lanes"``).
  """
  out: dict[str, int] = {}
  for s, lane in _accumulates(k):
    for x in _exprs(s.value):
      if isinstance(x, ir.Load) and _is_row(x, lane, k):
        if out.setdefault(x.buffer, lane[1]) != lane[1]:
          raise Unsupported("pallas: lanes")
    if isinstance(s.out, ir.Access) and k.vector is not None and lane is not None:
      if out.setdefault(s.out.buffer, lane[1]) != lane[1]:
        raise Unsupported("pallas: lanes")
  return out


def check(k, *, scalar_loads: bool) -> str | None:
  """None when the printer prints ``k``, else the fallback reason.

  Args:
    k: the planned kernel (a :class:`loopnest.Kernel`; anything else is a sparse output).
    scalar_loads: whether a row-viewed buffer (:func:`views`) may also be read one
      element at a time (a GPU and the interpreter: yes; a TPU keeps rows in VMEM and
      reads scalars from SMEM only).
  """
  if not isinstance(k, ir.Kernel):
    return "pallas: sparse output"
  if k.body.parallel is not ir.Parallel.OUTER:
    return "pallas: serial"
  if max(k.outputs[0].size, k.balance.batch * k.balance.nse, k.balance.units) >= 2 ** 31:
    return "pallas: index size"
  for s in ir.walk(k.body):
    if isinstance(s, (ir.Locate, ir.SkipUnless)):
      return "pallas: loop"
    if isinstance(s, ir.Loop) and s.over is not k.body.over and \
        not isinstance(s.over, (ir.Range, ir.Segment)):
      return "pallas: loop"
  if any(not isinstance(t, ir.Transpose) for t in k.prologue):
    return "pallas: loop"
  try:
    rows = views(k)
  except Unsupported as e:
    return e.args[0]
  for s, lane in _accumulates(k):
    for x in _exprs(s.value):
      if not isinstance(x, ir.Load):
        continue
      if _is_row(x, lane, k):
        if _row_of(x.offset, *lane) is None:
          return "pallas: lanes"
      elif x.buffer in rows and not scalar_loads:
        return "pallas: lanes"
  return None


def _accumulates(k: ir.Kernel):
  """Every :class:`Accumulate` of ``k`` with the lane it is printed along:
  ``(coordinate, width)`` of the vector index or of an enclosing reduction, or None."""
  red = reductions(k)
  vec = k.vector
  vector = (vec.coord.name, vec.size) if vec is not None and vec.coord is not None else None

  def visit(s, lane):
    if isinstance(s, ir.Accumulate):
      yield s, lane
    elif isinstance(s, ir.Loop):
      it = s.over
      if isinstance(it, ir.Range) and not it.srcs and it.coord.name in red:
        lane = (it.coord.name, red[it.coord.name])
      for b in s.body:
        yield from visit(b, lane)

  yield from visit(k.body, vector)


def _is_row(x: ir.Load, lane, k: ir.Kernel) -> bool:
  """Whether load ``x`` reads a row along ``lane`` (the vector index: a lane-varying
  load; a reduction's index: a load that reads it)."""
  if lane is None:
    return False
  if k.vector is not None:
    return x.lanes
  return lane[0] in _coords(x.offset)


def _exprs(x):
  """``x`` and its sub-expressions (pre-order)."""
  yield x
  if isinstance(x, (ir.Mul,)):
    for f in x.factors:
      yield from _exprs(f)
  elif isinstance(x, ir.Add):
    for t in x.terms:
      yield from _exprs(t)
  elif isinstance(x, ir.Affine):
    for t, _ in x.terms:
      yield from _exprs(t)
  elif isinstance(x, ir.Load):
    yield from _exprs(x.offset)


def _coords(x) -> set[str]:
  return {e.name for e in _exprs(x) if isinstance(e, ir.Coord)}


def _row_of(offset, lane: str, width: int):
  """The offset's row ``Affine`` (strides divided by ``width``) when it reads coordinate
  ``lane`` contiguously (stride 1) and every other term in whole rows; else None."""
  if not isinstance(offset, ir.Affine):
    return None
  terms = []
  for e, c in offset.terms:
    if isinstance(e, ir.Coord) and e.name == lane:
      if c != 1:
        return None
    elif c % width or lane in _coords(e):
      return None
    else:
      terms.append((e, c // width))
  return ir.Affine(tuple(terms))


def _divmod(x, n: int):
  """``(x // n, x % n)`` of a non-negative integer (truncating: no sign ops, which a
  TPU lowers only knowing the chip)."""
  if isinstance(x, int):
    return divmod(x, n)
  n = jnp.asarray(n, x.dtype)
  return jax.lax.div(x, n), jax.lax.rem(x, n)


# -- printing ----------------------------------------------------------------------------
class Printer:
  """Emits one kernel's units ``lo .. hi`` on refs (inside a Pallas kernel).

  Args:
    k: the kernel (``check(k) is None``).
    refs: ``{buffer name: ref}``: index buffers and flat values ``[n]``, row-viewed
      buffers ``[n // width, lanes]`` (``[n // width, 1, lanes]`` when ``tpu_rows``),
      ``perm`` for a transposed driver, and ``out``.
    lanes: ``{width: padded lanes}`` of the row views.
    acc_dtype: the accumulators' dtype.
    tpu_rows: rows are ``[1, lanes]`` tiles (a TPU's VMEM layout).
  """

  def __init__(self, k: ir.Kernel, refs: dict, lanes: dict[int, int], acc_dtype,
               tpu_rows: bool = False):
    self.k, self.refs, self.lanes, self.acc_dtype = k, refs, lanes, acc_dtype
    self.tpu_rows = tpu_rows
    self.rows = views(k)
    self.red = reductions(k)
    vec = k.vector
    self.vcoord = vec.coord.name if vec is not None and vec.coord is not None else None
    self.vwidth = vec.size if self.vcoord else 1

  def row_shape(self, width):
    return (1, self.lanes[width]) if self.tpu_rows else (self.lanes[width],)

  # -- expressions --------------------------------------------------------------------------
  def expr(self, x, env, accs, lane=None):
    """The value of ``x``; ``lane``: ``(coordinate, width)`` read as rows."""
    if isinstance(x, ir.Const):
      return x.value
    if isinstance(x, ir.Var):
      return env[x.name]
    if isinstance(x, ir.Coord):
      return env[x.name]
    if isinstance(x, ir.Pos):
      return env[("pos", x.src, x.level)] if x.level >= 0 else 0
    if isinstance(x, ir.Acc):
      return accs[x.name]
    if isinstance(x, ir.Affine):
      total = 0
      for e, c in x.terms:
        total = total + self.expr(e, env, accs) * c
      return total
    if isinstance(x, ir.Load):
      return self.load(x, env, accs, lane)
    if isinstance(x, ir.Mul):
      out = 1
      for f in x.factors:
        out = out * self.expr(f, env, accs, lane)
      return out
    if isinstance(x, ir.Add):
      out = 0
      for t in x.terms:
        out = out + self.expr(t, env, accs, lane)
      return out
    raise TypeError(f"Pallas printer: not an expression; got {x!r}")

  def load(self, x: ir.Load, env, accs, lane):
    """A row (along ``lane``) or one element of ``x.buffer``; values in the accumulators'
    dtype, integers (``perm``) as stored."""
    ref = self.refs[x.buffer]
    if _is_row(x, lane, self.k):
      row = self.expr(_row_of(x.offset, *lane), env, accs)
      value = ref[row] if self.tpu_rows else ref[row, :]
    else:
      off = self.expr(x.offset, env, accs)
      if x.buffer in self.rows:        # one element of a row-viewed buffer
        row, col = _divmod(off, self.rows[x.buffer])
        value = ref[row, 0, col] if self.tpu_rows else ref[row, col]
      else:
        value = ref[off]
    return value.astype(self.acc_dtype) if jnp.issubdtype(value.dtype, jnp.floating) else value

  # -- statements ---------------------------------------------------------------------------
  def stmts(self, body, env, accs):
    """Emits ``body``; returns the accumulators after it (declared ones included)."""
    accs = dict(accs)
    for s in body:
      if isinstance(s, ir.Loop):
        accs = self.loop(s, env, accs)
      elif isinstance(s, ir.Let):
        env = {**env, s.name: self.expr(s.value, env, accs)}
      elif isinstance(s, ir.Zero):
        shape = self.row_shape(self.vwidth) if self.vcoord else ()
        accs[s.name] = jnp.zeros(shape, self.acc_dtype)
      elif isinstance(s, ir.Accumulate):
        accs = self.accumulate(s, env, accs)
      elif isinstance(s, ir.Prefetch):
        pass
      else:
        raise TypeError(f"Pallas printer: not a statement; got {s!r}")
    return accs

  def accumulate(self, s: ir.Accumulate, env, accs):
    lane = (self.vcoord, self.vwidth) if self.vcoord else None
    value = self.expr(s.value, env, accs, lane)
    if isinstance(s.out, ir.Acc):
      return {**accs, s.out.name: accs[s.out.name] + value}
    ref = self.refs[s.out.buffer]
    if lane is not None:
      row = self.expr(_row_of(s.out.offset, *lane), env, accs)
      at = (row,) if self.tpu_rows else (row, slice(None))
    else:
      at = (self.expr(s.out.offset, env, accs),)
    if lane is not None:
      value = jnp.broadcast_to(value, self.row_shape(self.vwidth))
    if s.race is ir.Race.ACCUMULATE:
      value = ref[at].astype(self.acc_dtype) + value
    ref[at] = value.astype(ref.dtype)
    return accs

  def loop(self, s: ir.Loop, env, accs):
    it = s.over
    keep = tuple(accs)

    def run(extra_env, carried):
      out = self.stmts(s.body, {**env, **extra_env}, carried)
      return {name: out[name] for name in keep}

    if isinstance(it, ir.Range):
      c = it.coord.name
      if it.unit:
        return run({c: env["q"], **{("pos", src, it.level): env["q"] for src in it.srcs}},
                   accs)
      if not it.srcs and c in self.red:
        return self.reduce(s, env, accs)

      def step(i, carried):
        bind = {c: i, **{("pos", src, it.level): self.expr(ir.Pos(src, it.level - 1), env, {})
                         * it.size + i for src in it.srcs}}
        return run(bind, carried)
      return jax.lax.fori_loop(0, it.size, step, accs)
    assert isinstance(it, ir.Segment), it
    b = env["b"]
    pos, crd = self.refs[it.pos], self.refs[it.crd]
    c = it.coord.name

    def visit(p, carried):
      coord = crd[b * it.cap + p]
      bind = {c: coord, ("pos", it.src, it.level): p}
      return jax.lax.cond(coord < it.size, lambda a: run(bind, a), lambda a: a, carried)

    if it.unit:
      q = env["q"]
      return jax.lax.cond(q < pos[b * (it.parent_cap + 1) + 1], lambda a: visit(q, a),
                          lambda a: a, accs)
    at = b * (it.parent_cap + 1) + self.expr(ir.Pos(it.src, it.level - 1), env, {})
    lo = pos[at]
    hi = jnp.minimum(pos[at + 1], it.cap)
    return jax.lax.fori_loop(lo, hi, visit, accs)

  def reduce(self, s: ir.Loop, env, accs):
    """A loop over a summed index as rows of lanes and a lane sum (:func:`reductions`)."""
    it = s.over
    (acc,) = s.body
    value = self.expr(acc.value, env, accs, (it.coord.name, it.size))
    shape = self.row_shape(it.size)
    total = jnp.sum(jnp.broadcast_to(value, shape))
    return {**accs, acc.out.name: accs[acc.out.name] + total}

  def units(self, lo, hi):
    """The outer loop over units ``lo .. hi`` (its body, unit by unit)."""
    units = self.k.body.over

    def unit(u, carried):
      b, q = _divmod(u, units.width)
      env = {"b": b, "q": q}
      stride = 1
      for d in reversed(range(len(units.batch))):
        env[units.coords[d].name] = _divmod(_divmod(b, stride)[0], units.batch[d])[1]
        stride *= units.batch[d]
      self.stmts(self.k.body.body, env, {})
      return carried

    jax.lax.fori_loop(lo, hi, unit, jnp.int32(0))
