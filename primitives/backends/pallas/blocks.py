"""The blocked kernel form: products with a block-sparse operand as tile matmuls.

A BSR array is stored as its block view (a CSR over the block grid with two dense
block dims), so ``A @ X`` is the einsum ``IJab,Jbk->Iak`` and the planned loop nest
multiplies the block dims element by element. When the plan is such a product,
:func:`form` recognises it (from the :class:`~jscorch.primitives.loopnest.Kernel`
alone: its loads' strides) and :func:`run` emits one ``pallas_call`` that does
``acc[bm, kt] += A_blk[bm, bn] @ X[J, bn, kt]`` with ``jax.lax.dot_general``
(accumulating in float32 at least), on the matrix units of a GPU or TPU:

* ``"product"`` — ``out[I, a, k] = Σ_J Σ_b A[I, J, a, b] X[J, b, k]``: SpMM, and
  ``Aᵀ G`` (``IJab,Iak->Jbk``) over the planner's transposed copy (the column-major
  ``pos``/``crd`` and ``perm`` of :func:`launch.transposed`), blocks read transposed
  (swapped once, outside the kernel); the grid is (block-row programs balanced by
  stored blocks, ``k`` tiles); each program keeps a ``[bm, kt]`` accumulator per block
  row and stores it once (units own their rows: no zeroing);
* ``"sampled"`` — ``out[p, a, b] = Σ_k G[I, a, k] X[J, b, k]`` at the stored blocks
  (SDDMM: the gradient w.r.t. the block values), one ``[bm, bn]`` tile per stored
  block, padding blocks left at zero.

Free indices other than the block offsets (``k``, and a batch index ``vmap`` adds to
the dense operand) are folded into one ``k`` dimension by XLA transposes around the
call. Block and tile sizes are padded with zeros: to powers of two of at least 16 on a
GPU (Triton's ``dot``), to multiples of (8, 128) on a TPU (its tiles).

Example:
  >>> import numpy as np
  >>> from jscorch.primitives.layout import Layout
  >>> from jscorch.primitives.formats import Format, dense, compressed
  >>> from jscorch.primitives.einsum_spec import EinsumSpec, Operand
  >>> from jscorch.primitives.einsum_kernel import kernel_plan
  >>> lay = Layout(Format(dense, compressed, n_dense=2), (2, 3, 16, 16), 5)
  >>> spec = EinsumSpec((Operand((0, 1, 2, 3), lay), Operand((1, 3, 4))), out=(0, 2, 4),
  ...                   sizes=((0, 2), (1, 3), (2, 16), (3, 16), (4, 8)))
  >>> f = form(kernel_plan(spec, range(spec.n_inputs), np.dtype(np.float32))[0])
  >>> f.sampled, f.rows, f.inner, f.free
  (False, 16, 16, 8)
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ... import loopnest as ir

#: Stored blocks per program (with the block rows, as units): the grid's first axis.
BLOCKS_PER_PROGRAM = 16
#: The ``k`` tile of the product form on a GPU (the grid's second axis), and at most on a TPU.
GPU_K_TILE = 64
TPU_K_TILE = 512


@dataclasses.dataclass(frozen=True)
class View:
  """How a buffer is read as ``[blocks, rows, free]``: ``terms`` are its offset's
  ``(name, size, stride)``; ``blk`` / ``row`` name the block index and the block offset
  (``"leaf"`` for the stored position), ``free`` the other indices, in order."""
  buffer: str
  arg: int
  terms: tuple
  blk: str
  row: str
  free: tuple


@dataclasses.dataclass(frozen=True)
class Form:
  """A recognised blocked product (see the module docstring).

  ``unit``: the operand read at the program's block row (the output of a product, the
  row operand of a sampled product); ``seg``: the dense operand read at the stored
  block's column; ``sparse``: the block values (a product) or the sampled output, with
  ``swap`` when its stored blocks are ``[inner, rows]`` (read or written transposed).
  """
  sampled: bool
  unit: View
  seg: View
  sparse: View
  swap: bool
  units: int
  size: int
  nse: int
  rows: int
  inner: int
  free: int
  pos: str
  crd: str
  transposed: bool


def _terms(offset, sizes):
  if not isinstance(offset, ir.Affine):
    return None
  out = []
  for e, c in offset.terms:
    if isinstance(e, ir.Coord) and e.name in sizes:
      out.append((e.name, sizes[e.name], c))
    elif isinstance(e, ir.Var) and e.name == "leaf":
      out.append(("leaf", sizes["leaf"], c))
    else:
      return None
  names = [n for n, _, _ in out]
  return tuple(out) if len(set(names)) == len(names) else None


def _row_major(terms) -> bool:
  """Whether ``terms`` address a dense row-major array (in some order of the indices)."""
  stride = 1
  for _, size, c in sorted(terms, key=lambda t: t[2]):
    if c != stride and size > 1:
      return False
    stride *= size
  return True


def _leaf(let, nse):
  """Whether the ``leaf`` is the stored position (``b * nse + p``, ``b == 0``) or
  ``perm[p]`` (a transposed driver), or neither (None)."""
  v = let.value
  pos = ir.Pos(0, 1)
  if isinstance(v, ir.Load) and v.buffer == "perm" and v.offset == pos:
    return "perm"
  if v == ir.Add((ir.Mul((ir.Var("b"), ir.Const(nse))), pos)) or v == pos:
    return "stored"
  return None


def _nest(k):
  """``(unit loop, segment loop, leaf kind)`` of a kernel over block rows and their stored
  blocks (units over one structure's first level, a transposed one's at most), or None."""
  if not isinstance(k, ir.Kernel) or k.body.parallel is not ir.Parallel.OUTER:
    return None
  if k.balance.batch != 1 or k.body.over.batch or k.vector is not None:
    return None
  if any(not isinstance(t, ir.Transpose) for t in k.prologue) or len(k.prologue) > 1:
    return None
  (outer,) = k.body.body if len(k.body.body) == 1 else (None,)
  if not (isinstance(outer, ir.Loop) and isinstance(outer.over, ir.Range) and outer.over.unit
          and outer.over.level == 0 and len(outer.body) == 1):
    return None
  (seg,) = outer.body
  if not (isinstance(seg, ir.Loop) and isinstance(seg.over, ir.Segment) and not seg.over.unit
          and seg.over.level == 1 and seg.over.src == 0 and seg.body
          and isinstance(seg.body[0], ir.Let) and seg.body[0].name == "leaf"):
    return None
  leaf = _leaf(seg.body[0], seg.over.cap)
  if leaf is None or (leaf == "perm") != bool(k.prologue):
    return None
  return outer, seg, leaf


def _product(body, sizes):
  """The one ``Accumulate`` of a product of loads in ``body`` (free ``Range`` loops,
  accumulators) and the output it reaches, or None; records the loops' sizes."""
  products, stores = [], []
  stack = list(body)
  while stack:
    s = stack.pop()
    if isinstance(s, ir.Loop):
      if not isinstance(s.over, ir.Range) or s.over.srcs or s.over.unit:
        return None
      sizes[s.over.coord.name] = s.over.size
      stack.extend(s.body)
    elif isinstance(s, ir.Accumulate):
      (products if isinstance(s.value, ir.Mul) else stores).append(s)
    elif not isinstance(s, ir.Zero):
      return None
  if len(products) != 1 or len(stores) > 1:
    return None
  (p,) = products
  out = stores[0].out if stores else p.out
  if not isinstance(out, ir.Access) or (stores and not (
      isinstance(p.out, ir.Acc) and stores[0].value == p.out)):
    return None
  return p, out


def form(k) -> Form | None:
  """The blocked form of kernel ``k``, or None (then the element-wise printer runs)."""
  nest = _nest(k)
  if nest is None:
    return None
  outer, seg, leaf = nest
  it = seg.over
  sizes = {outer.over.coord.name: outer.over.size, it.coord.name: it.size, "leaf": it.cap}
  found = _product(seg.body[1:], sizes)
  if found is None:
    return None
  p, out = found
  loads = p.value.factors
  if len(loads) != 2 or not all(isinstance(x, ir.Load) and not x.lanes for x in loads):
    return None
  args = {b.name: b.arg for b in k.inputs}
  views = []
  for x in (*loads, out):
    t = _terms(x.offset, sizes)
    if t is None or not _row_major(t):
      return None
    views.append((x.buffer, args.get(x.buffer, -1), t))
  c0, c1 = outer.over.coord.name, it.coord.name

  def names(v):
    return {n for n, _, _ in v[2]}
  sparse = [v for v in views if "leaf" in names(v)]
  unit = [v for v in views if c0 in names(v)]
  segv = [v for v in views if c1 in names(v)]
  if len(sparse) != 1 or len(unit) != 1 or len(segv) != 1:
    return None
  (sparse,), (unit,), (segv,) = sparse, unit, segv
  if len({id(sparse), id(unit), id(segv)}) != 3:
    return None
  blk = names(sparse) - {"leaf"}
  a = names(unit) & blk
  b = names(segv) & blk
  if len(blk) != 2 or len(a) != 1 or len(b) != 1 or a == b:
    return None
  (a,), (b,) = a, b
  free = names(unit) - {c0, a}
  if free != names(segv) - {c1, b} or (names(unit) & {c1, "leaf"}) or \
      (names(segv) & {c0, "leaf"}):
    return None
  sampled = sparse is views[2]
  if not sampled and unit is not views[2]:
    return None
  stride = dict((n, c) for n, _, c in unit[2])
  free = tuple(sorted(free, key=lambda n: -stride[n]))
  sstride = {n: c for n, _, c in sparse[2]}

  def view(v, blk_name, row):
    return View(v[0], v[1], v[2], blk_name, row, free)
  return Form(sampled=sampled, unit=view(unit, c0, a), seg=view(segv, c1, b),
              sparse=View(sparse[0], sparse[1], sparse[2], "leaf", a, (b,)),
              swap=sstride[a] < sstride[b], units=outer.over.size, size=it.size, nse=it.cap,
              rows=sizes[a], inner=sizes[b], free=math.prod(sizes[n] for n in free),
              pos=it.pos, crd=it.crd, transposed=leaf == "perm")


# -- buffers as [blocks, rows, free] and back ------------------------------------------------
def _order(v: View):
  return sorted(v.terms, key=lambda t: -t[2])


def to_blocks(x, v: View):
  """Buffer ``x`` (any shape, row-major over ``v.terms``) as ``[blocks, rows, free]``."""
  order = _order(v)
  x = x.reshape(tuple(s for _, s, _ in order))
  names = [n for n, _, _ in order]
  x = jnp.transpose(x, [names.index(n) for n in (v.blk, v.row, *v.free)])
  return x.reshape(x.shape[0], x.shape[1], -1)


def from_blocks(x, v: View):
  """Inverse of :func:`to_blocks`: ``[blocks, rows, free]`` as the flat buffer."""
  sizes = {n: s for n, s, _ in v.terms}
  x = x.reshape((sizes[v.blk], sizes[v.row], *(sizes[n] for n in v.free)))
  names = [v.blk, v.row, *v.free]
  return jnp.transpose(x, [names.index(n) for n, _, _ in _order(v)]).reshape(-1)


def _pad(x, shape):
  return jnp.pad(x, [(0, t - s) for s, t in zip(x.shape, shape)])


def _up(n, m):
  return -(-n // m) * m


def _pow2(n, least=16):
  return max(least, 1 << (max(n, 1) - 1).bit_length())


def _scalars(k, f: Form, flat, programs: int) -> dict:
  """``bounds`` (block rows per program, balanced by stored blocks), ``pos``, ``crd``
  (a transposed driver's column-major copy) and ``perm``, as int32."""
  from . import launch
  index = {b.name: flat[b.arg].reshape(-1).astype(jnp.int32)
           for b in k.inputs if b.role is not ir.Role.VALUES}
  scalars = {"pos": index[f.pos], "crd": index[f.crd]}
  if f.transposed:
    (t,) = k.prologue
    scalars["pos"], scalars["crd"], scalars["perm"] = launch.transposed(
        t, index[t.pos], index[t.crd])
  index = {f.pos: scalars["pos"], f.crd: scalars["crd"]}
  bounds = launch.balanced_bounds(launch.work_before(k.balance, index), programs)
  return {"bounds": bounds, **scalars}


def _tiles(f: Form, tpu: bool):
  """``(rows, inner, k tile, k)`` padded: multiples of (8, 128) on a TPU, powers of two
  of at least 16 on a GPU (a sampled product's ``k`` is one tile)."""
  R, C, K = f.rows, f.inner, f.free
  if tpu:
    Rp, Cp = _up(R, 8), _up(C, 128)
    kt = min(_up(K, 128), TPU_K_TILE)
  else:
    Rp, Cp = _pow2(R), _pow2(C)
    kt = _pow2(K) if f.sampled else min(_pow2(K), GPU_K_TILE)
  return Rp, Cp, kt, _up(K, kt)


# -- the kernel -----------------------------------------------------------------------------
def run(k: ir.Kernel, f: Form, out_shape, *flat, flavor: str, interpret: bool):
  """The einsum's output computed by the blocked kernel of ``f`` (``form(k)``)."""
  from jax.experimental import pallas as pl

  dtype = jnp.dtype(k.dtype)
  acc_dtype = jnp.promote_types(dtype, jnp.float32)
  tpu = flavor == "tpu"
  programs = max(1, min(f.units, -(-(f.units + f.nse) // BLOCKS_PER_PROGRAM)))
  scalars = _scalars(k, f, flat, programs)
  R, C, K = f.rows, f.inner, f.free
  Rp, Cp, kt, Kp = _tiles(f, tpu)

  unit = _pad(to_blocks(flat[f.unit.arg].astype(dtype), f.unit), (f.units, Rp, Kp)) \
      if f.sampled else None
  seg = _pad(to_blocks(flat[f.seg.arg].astype(dtype), f.seg), (f.size, Cp, Kp))
  if not f.sampled:
    a = _pad(to_blocks(flat[f.sparse.arg].astype(dtype), f.sparse), (f.nse, Rp, Cp))
  transposed, nse, size = f.transposed, f.nse, f.size

  def stored(refs, p):
    return refs["perm"][p] if transposed else p

  def segments(refs, u, body, init):
    pos, crd = refs["pos"], refs["crd"]
    lo, hi = pos[u], jnp.minimum(pos[u + 1], nse)

    def step(p, carry):
      J = crd[p]
      return jax.lax.cond(J < size, lambda c: body(p, J, c), lambda c: c, carry)
    return jax.lax.fori_loop(lo, hi, step, init)

  nt = (((1,), (0,)), ((), ()))
  tn = (((1,), (1,)), ((), ()))
  if not f.sampled:
    names = [*scalars, "a", "x", "out"]
    grid = (Kp // kt, programs) if tpu else (programs, Kp // kt)

    def kernel(*refs):
      refs = dict(zip(names, refs))
      g, j = (pl.program_id(1), pl.program_id(0)) if tpu else (pl.program_id(0),
                                                               pl.program_id(1))
      cols = slice(None) if tpu else pl.ds(pl.multiple_of(j * kt, kt), kt)
      bounds = refs["bounds"]

      def unit_(u, carry):
        def add(p, J, acc):
          blk = refs["a"][stored(refs, p)]
          x = refs["x"][J, :, cols]
          return acc + jax.lax.dot_general(blk, x, nt, preferred_element_type=acc_dtype)
        acc = segments(refs, u, add, jnp.zeros((Rp, kt), acc_dtype))
        refs["out"][u, :, cols] = acc.astype(dtype)
        return carry
      jax.lax.fori_loop(bounds[g], bounds[g + 1], unit_, jnp.int32(0))

    operands = {**scalars, "a": a, "x": seg}
    out_struct = jax.ShapeDtypeStruct((f.units, Rp, Kp), dtype)
    aliases = {}
    specs = out_spec = semantics = None
    if tpu:
      specs = [pl.BlockSpec((f.nse, Rp, Cp), lambda j, g, *_: (0, 0, 0)),
               pl.BlockSpec((f.size, Cp, kt), lambda j, g, *_: (0, 0, j))]
      out_spec = pl.BlockSpec((f.units, Rp, kt), lambda j, g, *_: (0, 0, j))
      semantics = ("parallel", "arbitrary")
  else:
    names = [*scalars, "g", "x", "out_init", "out"]
    grid = (programs,)

    def kernel(*refs):
      refs = dict(zip(names, refs))
      g = pl.program_id(0)
      bounds = refs["bounds"]

      def unit_(u, carry):
        def tile(p, J, c):
          res = jax.lax.dot_general(refs["g"][u], refs["x"][J], tn,
                                    preferred_element_type=acc_dtype)
          refs["out"][stored(refs, p)] = res.astype(dtype)
          return c
        return segments(refs, u, tile, carry)
      jax.lax.fori_loop(bounds[g], bounds[g + 1], unit_, jnp.int32(0))

    operands = {**scalars, "g": unit, "x": seg,
                "out_init": jnp.zeros((f.nse, Rp, Cp), dtype)}
    out_struct = jax.ShapeDtypeStruct((f.nse, Rp, Cp), dtype)
    aliases = {len(operands) - 1: 0}
    specs = out_spec = semantics = None
    if tpu:
      full = [pl.BlockSpec(x.shape, lambda g, *_, n=x.ndim: (0,) * n)
              for x in (unit, seg, operands["out_init"])]
      specs, out_spec = full, full[-1]
      semantics = ("arbitrary",)

  call = _pallas_call(kernel, grid, out_struct, aliases, len(scalars),
                      (specs, out_spec, semantics) if tpu else None, interpret)
  result = call(*operands.values())
  if not f.sampled:
    out = from_blocks(result[:, :R, :K], f.unit)
  else:
    out = from_blocks(result[:, :R, :C], f.sparse)
  return out.reshape(out_shape)


def _pallas_call(kernel, grid, out_struct, aliases, n_scalars, tpu_specs, interpret):
  """The ``pallas_call``: on a TPU with ``tpu_specs = (in_specs, out_spec, semantics)``
  and the first ``n_scalars`` operands scalar-prefetched, else Triton's (whole refs)."""
  from jax.experimental import pallas as pl
  if tpu_specs is not None:
    from jax.experimental.pallas import tpu as pltpu
    specs, out_spec, semantics = tpu_specs
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=n_scalars, grid=grid, in_specs=specs, out_specs=out_spec)
    return pl.pallas_call(kernel, grid_spec=grid_spec, out_shape=out_struct,
                          input_output_aliases=aliases, interpret=interpret,
                          compiler_params=pltpu.CompilerParams(dimension_semantics=semantics))
  params = {}
  if not interpret:
    from jax.experimental.pallas import triton as pltriton
    params = dict(compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2))
  return pl.pallas_call(kernel, grid=grid, out_shape=out_struct,
                        input_output_aliases=aliases, interpret=interpret, **params)


def dtypes_ok(dtype, platform: str) -> bool:
  """Triton's ``dot`` takes no float64: a GPU runs float64 blocks element by element."""
  return not (platform in ("cuda", "rocm") and np.dtype(dtype) == np.float64)
