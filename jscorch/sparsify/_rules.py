"""The sparse rule of each primitive, in one table (:data:`RULES`, keyed by primitive name).

A rule ``rule(ctx, eqn, invals) -> outvals`` gets the equation and its operands
(dense arrays, SparseArrays, or lazy values from ``_fusion``) and returns the
results. Rules run when an operand is sparse, and for the primitives in
:data:`LAZY_DENSE` also on dense operands (so products and elementwise functions
stay lazy until they can be fused or sampled). ``docs/sparsify.md`` is the table
in words.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jscorch.array import is_sparse
from jscorch.ops import elementwise as ops_elementwise
from jscorch.ops import shape as ops_shape

from . import _fusion as fu
from . import _sparse_ops as so
from ._fusion import (
  Map,
  Product,
  force,
  has_sparse,
  is_concrete,
  known_zero,
  same_pattern,
  scalar_source,
)
from ._interpreter import bind

RULES: dict = {}


def rule(*names):
  def register(fn):
    for name in names:
      RULES[name] = fn
    return fn
  return register


def _aval(eqn):
  aval = eqn.outvars[0].aval
  return tuple(aval.shape), np.dtype(aval.dtype)


def _thunk(eqn, invals):
  return lambda: bind(eqn, [force(v) for v in invals])[0]


def _prod(ctx, v) -> Product:
  return fu.as_product(v, policy=ctx.policy)


def _finish(v):
  """Very deep lazy chains are evaluated now (bounded recursion on materialisation)."""
  return [v.materialize() if isinstance(v, fu.Lazy) and v.depth > fu._MAX_DEPTH else v]


def _force_product(v):
  """Evaluates pending products with a sparse operand (to a SparseArray or a dense array).

  Dense products (broadcasts of a scalar, outer products) and Maps stay lazy, so
  they can still be recognised as zeros or sampled at a pattern.
  """
  return force(v) if isinstance(v, Product) and v.has_sparse else v


def _scalar_const(v) -> bool:
  return not isinstance(v, fu.Lazy) and not is_sparse(v) and np.shape(v) == () and \
      is_concrete(v)


def _why_map(eqn, zero_value=None) -> str:
  name = eqn.primitive.name
  if zero_value is not None:
    return (f"is not zero-preserving ({name}(0) = {zero_value}), so its result on a sparse "
            "operand is dense")
  return ("does not keep the zeros of its sparse operand here (not zero-preserving for these "
          "operands), so its result is dense")


def _map(ctx, eqn, invals, why=None):
  shape, dtype = _aval(eqn)
  return fu.Map(eqn.primitive, eqn.params, invals, shape, dtype, policy=ctx.policy,
                eqn=ctx.site(eqn), why=why or _why_map(eqn))


# -- products: kept lazy, fused into one einsum ------------------------------------------------
@rule("dot_general")
def _dot_general(ctx, eqn, invals):
  a, b = invals
  _, dtype = _aval(eqn)
  return _finish(fu.dot_general(_prod(ctx, a), _prod(ctx, b), eqn.params["dimension_numbers"],
                                dtype, thunk=_thunk(eqn, invals), eqn=ctx.site(eqn)))


@rule("mul")
def _mul(ctx, eqn, invals):
  shape, dtype = _aval(eqn)
  if dtype == np.dtype(bool):
    return _elementwise(ctx, eqn, invals)
  a, b = invals
  return _finish(fu.multiply(_prod(ctx, a), _prod(ctx, b), shape, dtype,
                             thunk=_thunk(eqn, invals), eqn=ctx.site(eqn)))


@rule("neg")
def _neg(ctx, eqn, invals):
  _, dtype = _aval(eqn)
  if not (jnp.issubdtype(dtype, jnp.signedinteger) or jnp.issubdtype(dtype, jnp.inexact)):
    return _elementwise(ctx, eqn, invals)
  return _finish(fu.scale(_prod(ctx, invals[0]), np.asarray(-1, dtype),
                          thunk=_thunk(eqn, invals), eqn=ctx.site(eqn)))


@rule("transpose")
def _transpose(ctx, eqn, invals):
  return _finish(fu.transpose(_prod(ctx, invals[0]), eqn.params["permutation"],
                              thunk=_thunk(eqn, invals), eqn=ctx.site(eqn)))


@rule("reduce_sum")
def _reduce_sum(ctx, eqn, invals):
  _, dtype = _aval(eqn)
  return _finish(fu.reduce_sum(_prod(ctx, invals[0]), eqn.params["axes"], dtype,
                               thunk=_thunk(eqn, invals), eqn=ctx.site(eqn)))


@rule("broadcast_in_dim")
def _broadcast_in_dim(ctx, eqn, invals):
  if len(invals) != 1:      # dynamic shapes
    return bind(eqn, [force(v) for v in invals])
  p = eqn.params
  return _finish(fu.broadcast(_prod(ctx, invals[0]), p["shape"], p["broadcast_dimensions"],
                              thunk=_thunk(eqn, invals), eqn=ctx.site(eqn)))


@rule("squeeze")
def _squeeze(ctx, eqn, invals):
  return _finish(fu.squeeze(_prod(ctx, invals[0]), eqn.params["dimensions"],
                            thunk=_thunk(eqn, invals), eqn=ctx.site(eqn)))


@rule("reshape")
def _reshape(ctx, eqn, invals):
  p = eqn.params
  if len(invals) == 1 and p.get("dimensions") is None:
    out = fu.reshape_unit(_prod(ctx, invals[0]), p["new_sizes"], thunk=_thunk(eqn, invals),
                          eqn=ctx.site(eqn))
    if out is not None:
      return _finish(out)
  x = force(invals[0])
  if not is_sparse(x):
    return bind(eqn, [x] + [force(v) for v in invals[1:]])
  if p.get("dimensions") is not None:
    x = _transposed(ctx, eqn, x, p["dimensions"])
  return [so.reshape(x, p["new_sizes"])]


def _transposed(ctx, eqn, A, perm):
  out = fu.transpose(_prod(ctx, A), perm, eqn=ctx.site(eqn))
  return force(out)


@rule("div")
def _div(ctx, eqn, invals):
  shape, dtype = _aval(eqn)
  a, b = invals[0], _force_product(invals[1])
  if not jnp.issubdtype(dtype, jnp.inexact) or not has_sparse(a) or has_sparse(b):
    return _elementwise(ctx, eqn, [a, b])
  return _finish(fu.multiply(_prod(ctx, a), _prod(ctx, _reciprocal(ctx, b, dtype)), shape,
                             dtype, eqn=ctx.site(eqn)))


def _reciprocal(ctx, b, dtype):
  """``1 / b`` computed on the smallest array ``b`` is a broadcast of (lazily otherwise)."""
  one = np.asarray(1, dtype)
  s = scalar_source(b)
  if s is not None:
    return jax.lax.div(jnp.asarray(one), jnp.asarray(s, dtype))
  src = fu.pure_broadcast_source(b)
  if src is not None:
    leaf, ids, p = src
    inv = jax.lax.div(jnp.asarray(one), jnp.asarray(leaf, dtype))
    return Product([(inv, ids)], p.out, p.sizes, dtype, policy=ctx.policy)
  if not isinstance(b, fu.Lazy):
    return jax.lax.div(jnp.asarray(one), b)
  return fu.Map(jax.lax.div_p, {}, (one, b), b.shape, dtype, policy=ctx.policy, eqn=None,
                why="divides")


# -- elementwise functions ------------------------------------------------------------------------
_UNARY = ("abs", "acos", "acosh", "asin", "asinh", "atan", "atanh", "bessel_i0e", "bessel_i1e",
          "cbrt", "ceil", "clz", "conj", "convert_element_type", "cos", "cosh", "digamma", "erf",
          "erf_inv", "erfc", "exp", "exp2", "expm1", "floor", "imag", "integer_pow",
          "is_finite", "lgamma", "log", "log1p", "logistic", "not", "population_count", "real",
          "reduce_precision", "round", "rsqrt", "sign", "sin", "sinh", "sqrt", "square", "tan",
          "tanh", "stop_gradient")
_BINARY = ("rem", "pow", "max", "min", "atan2", "nextafter", "and", "or", "xor", "eq", "ne",
           "lt", "le", "gt", "ge", "shift_left", "shift_right_logical", "shift_right_arithmetic",
           "complex", "igamma", "igammac", "polygamma", "zeta", "clamp")
FIRST_ARG_ZERO = frozenset({"div", "rem", "and", "shift_left", "shift_right_logical",
                            "shift_right_arithmetic", "mul"})
"""Binary primitives with ``f(0, y) == 0`` for every ``y``: a sparse first operand keeps its
pattern whatever the dense second operand is."""


def _classify(prim, params, specs):
  """``(zero_preserving, singular, value_at_zero)`` of ``prim`` with sparse args set to 0.

  ``specs`` has, per argument, ``("S", dtype)`` for a sparse operand (evaluated at
  0) or ``("C", value)`` for a concrete scalar. ``singular``: some derivative at 0
  is not finite (padding is then evaluated at a safe point).
  """
  with jax.ensure_compile_time_eval():
    args = [jnp.zeros((), v) if k == "S" else jnp.asarray(v) for k, v in specs]
    out = prim.bind(*args, **params)
    zero = bool(np.all(np.asarray(out) == 0))
    singular = False
    pos = [k for k, (kind, _) in enumerate(specs) if kind == "S"]
    if zero and jnp.issubdtype(out.dtype, jnp.inexact) and all(
        jnp.issubdtype(args[k].dtype, jnp.inexact) for k in pos):
      def f(*xs):
        full = list(args)
        for k, x in zip(pos, xs):
          full[k] = x
        return prim.bind(*full, **params)
      xs = [args[k] for k in pos]
      for k in range(len(xs)):
        tangents = [jnp.ones_like(x) if j == k else jnp.zeros_like(x) for j, x in enumerate(xs)]
        _, t = jax.jvp(f, xs, tangents)
        singular |= not bool(np.all(np.isfinite(np.asarray(t))))
  value = np.asarray(out)
  return zero, singular, value.item() if value.size == 1 else value


_LINEAR = frozenset({"conj", "real", "imag", "stop_gradient", "copy", "copy_p"})
"""Elementwise primitives with ``f(a + b) == f(a) + f(b)``: they may map duplicates one by one."""


def _is_linear(prim, params, args) -> bool:
  """True when ``prim`` is additive in its (single) sparse argument; ``convert_element_type``
  is, unless it rounds or truncates (to an integer or bool type from a non-integer one)."""
  if sum(is_sparse(a) for a in args) != 1:
    return False
  if prim.name == "convert_element_type":
    new, old = np.dtype(params["new_dtype"]), np.dtype(next(a for a in args if is_sparse(a)).dtype)
    return jnp.issubdtype(new, jnp.inexact) or (
        jnp.issubdtype(new, jnp.integer) and jnp.issubdtype(old, jnp.integer))
  return prim.name in _LINEAR


def _coalesce_args(ctx, args):
  """``args`` with every sparse argument's duplicates summed (unique ones unchanged); arrays
  of one pattern get one coalesced pattern, so their values still align."""
  done = {}
  for a in args:
    if is_sparse(a) and id(a) not in done:
      done[id(a)] = fu.coalesce(a, ctx.policy)
  return [done[id(a)] if is_sparse(a) else a for a in args]


def _map_values(ctx, P, prim, params, args, singular):
  """``P``'s pattern with ``prim`` applied to its values (sparse args give ``data``).

  A non-linear ``prim`` must see each coordinate's summed value: a non-unique
  ``P`` is coalesced first (same capacity); a linear one keeps ``P``'s buffers.
  """
  if not _is_linear(prim, params, args):
    args = _coalesce_args(ctx, args)
    P = next(a for a in args if is_sparse(a))     # P is the first sparse argument
  if singular:
    valid = fu.valid_entries(P, ctx.policy)
    vals = [jnp.where(valid, a.data, jnp.ones((), a.dtype)) if is_sparse(a)
            else jnp.broadcast_to(scalar_source(a), P.data.shape) for a in args]
    out = prim.bind(*vals, **params)
    return P.with_data(jnp.where(valid, out, jnp.zeros((), out.dtype)))
  vals = [a.data if is_sparse(a) else jnp.broadcast_to(scalar_source(a), P.data.shape)
          for a in args]
  return P.with_data(prim.bind(*vals, **params))


def _sample(ctx, v, P, valid):
  if is_sparse(v) and same_pattern(v, P):
    return v.data
  s = scalar_source(v)
  if s is not None:
    return jnp.broadcast_to(s, P.data.shape)
  if tuple(v.shape) != tuple(P.shape):
    v = fu.broadcast_to(_prod(ctx, v), P.shape)
  ids = tuple(fu.fresh() for _ in P.shape)
  return fu.sample_at(v, ids, P, ids, valid, ctx.policy)


def _elementwise(ctx, eqn, invals):
  shape, _ = _aval(eqn)
  prim, params = eqn.primitive, eqn.params
  if not any(has_sparse(v) for v in invals):
    if all(_scalar_const(v) for v in invals):          # constant folding
      with jax.ensure_compile_time_eval():
        return bind(eqn, invals)
    return _finish(_map(ctx, eqn, invals))
  args = [_force_product(v) for v in invals]
  if not any(has_sparse(v) for v in args):        # the products were dense
    return _elementwise(ctx, eqn, args)
  if any(isinstance(v, Map) and v.has_sparse for v in args):
    return _finish(_map(ctx, eqn, invals))
  sparse = [v for v in args if is_sparse(v)]
  why = None
  if all(tuple(v.shape) == shape for v in sparse):
    P = sparse[0]
    if all(same_pattern(v, P) for v in sparse):
      scalars = [scalar_source(v) for v in args if not is_sparse(v)]
      if all(s is not None and is_concrete(s) for s in scalars):
        specs = [("S", np.dtype(a.dtype)) if is_sparse(a) else ("C", np.asarray(scalar_source(a)))
                 for a in args]
        zero, singular, at_zero = _classify(prim, params, specs)
        if zero:
          return [_map_values(ctx, P, prim, params, args, singular)]
        why = _why_map(eqn, at_zero)
      elif prim.name in FIRST_ARG_ZERO and is_sparse(args[0]) and len(args) == 2:
        if prim.name not in ("div", "mul"):       # rem, and, shifts: not linear in P
          P = fu.coalesce(P, ctx.policy)
        valid = fu.valid_entries(P, ctx.policy)
        other = _sample(ctx, args[1], P, valid)
        out = prim.bind(P.data, other, **params)
        return [P.with_data(jnp.where(valid, out, jnp.zeros((), out.dtype)))]
    elif len(args) == 2 and len(sparse) == 2 and sparse[0].ndim == sparse[1].ndim and (
        sparse[0].n_batch, sparse[0].n_dense) == (sparse[1].n_batch, sparse[1].n_dense):
      zero, _, _ = _classify(prim, params, [("S", np.dtype(a.dtype)) for a in args])
      if zero:
        U, a, b = so.union_align(*args)
        return [U.with_data(prim.bind(a, b, **params))]
  return _finish(_map(ctx, eqn, invals, why))


for _name in _UNARY + _BINARY:
  RULES[_name] = _elementwise


@rule("select_n")
def _select_n(ctx, eqn, invals):
  shape, _ = _aval(eqn)
  if not any(has_sparse(v) for v in invals):
    return _elementwise(ctx, eqn, invals)
  args = [_force_product(v) for v in invals]
  if not any(has_sparse(v) for v in args):
    return _elementwise(ctx, eqn, args)
  if not any(isinstance(v, Map) and v.has_sparse for v in args):
    args = _coalesce_args(ctx, args)    # a predicate of duplicates must see their sum (and
    pred, *cases = args                 # values are sampled at a unique pattern)
    for P in [v for v in args if is_sparse(v) and tuple(v.shape) == shape]:
      zero_out = lambda v, P=P: known_zero(v) or (is_sparse(v) and same_pattern(v, P))
      if is_sparse(pred) and same_pattern(pred, P):
        ok = zero_out(cases[0])
      else:
        ok = all(zero_out(c) for c in cases)
      if ok:
        valid = fu.valid_entries(P, ctx.policy)
        vals = [_sample(ctx, v, P, valid) for v in args]
        out = eqn.primitive.bind(*vals, **eqn.params)
        return [P.with_data(jnp.where(valid, out, jnp.zeros((), out.dtype)))]
  return _finish(_map(ctx, eqn, invals, "selects between values that are not all zero "
                      "outside the sparse pattern, so its result is dense"))


@rule("add", "sub", "add_any")
def _add(ctx, eqn, invals):
  shape, _ = _aval(eqn)
  if not any(has_sparse(v) for v in invals):
    return _elementwise(ctx, eqn, invals)
  sub = eqn.primitive.name == "sub"
  a, b = invals
  if known_zero(b) and tuple(a.shape) == shape:
    return [a]
  if known_zero(a) and not sub and tuple(b.shape) == shape:
    return [b]
  fa, fb = _force_product(a), _force_product(b)
  if not (has_sparse(fa) or has_sparse(fb)):
    return _elementwise(ctx, eqn, [fa, fb])
  why = "adds a dense broadcast or scalar to a sparse operand, so its result is dense"
  if not any(isinstance(v, Map) and v.has_sparse for v in (fa, fb)):
    sa, sb = is_sparse(fa), is_sparse(fb)
    if sa and sb and tuple(fa.shape) == tuple(fb.shape) == shape:
      if same_pattern(fa, fb):
        return [fa.with_data(fa.data - fb.data if sub else fa.data + fb.data)]
      if (fa.n_batch, fa.n_dense) == (fb.n_batch, fb.n_dense):
        return [ops_elementwise.subtract(fa, fb) if sub else ops_elementwise.add(fa, fb)]
    elif sa != sb:
      dense_in = b if sa else a
      if _full_dense(dense_in, shape):
        fd = force(dense_in)
        x, y = (fa, fd) if sa else (fd, fb)
        return [ops_elementwise.subtract(x, y) if sub else ops_elementwise.add(x, y)]
  return _finish(_map(ctx, eqn, invals, why))


def _full_dense(v, shape) -> bool:
  """A dense operand of the full output shape that is not a cheap broadcast."""
  if tuple(np.shape(v) if not hasattr(v, "shape") else v.shape) != shape:
    return False
  if isinstance(v, Product) and (v.free or fu.pure_broadcast_source(v) is not None and any(
      v.sizes[i] == 1 for i in v.terms[0][1])):
    return False
  return scalar_source(v) is None


@rule("copy", "copy_p", "sharding_constraint")
def _identity(ctx, eqn, invals):
  if has_sparse(invals[0]):
    return [invals[0]]
  return bind(eqn, [force(invals[0])])


@rule("optimization_barrier")
def _barrier(ctx, eqn, invals):
  return list(invals)


# -- reductions and structure ---------------------------------------------------------------
@rule("reduce_max", "reduce_min")
def _reduce_extremum(ctx, eqn, invals):
  x = force(invals[0])
  _, dtype = _aval(eqn)
  if is_sparse(x) and dtype != np.dtype(bool):
    kind = "max" if eqn.primitive.name == "reduce_max" else "min"
    return [so.reduce_extremum(x, eqn.params["axes"], kind)]
  return bind(eqn, ctx.policy.densify_operands(ctx.site(eqn), [x],
                                               "has no sparse rule for bool values"))


@rule("concatenate")
def _concatenate(ctx, eqn, invals):
  vals = [force(v) for v in invals]
  if all(is_sparse(v) for v in vals):
    try:
      return [ops_shape.concatenate(vals, axis=eqn.params["dimension"])]
    except (ValueError, TypeError) as e:
      why = f"cannot join these sparse operands without densifying ({e})"
  elif any(is_sparse(v) for v in vals):
    why = "joins sparse and dense operands, so its result is dense"
  else:
    return bind(eqn, vals)
  return bind(eqn, ctx.policy.densify_operands(ctx.site(eqn), vals, why))


@rule("stack")
def _stack(ctx, eqn, invals):
  vals = [force(v) for v in invals]
  if all(is_sparse(v) for v in vals):
    try:
      return [ops_shape.stack(ops_shape.common_split(vals),
                              axis=eqn.params["axis"])]
    except ValueError as e:
      why = f"cannot stack these sparse operands without densifying ({e})"
  else:
    why = "stacks sparse and dense operands, so its result is dense"
  return bind(eqn, ctx.policy.densify_operands(ctx.site(eqn), vals, why))


@rule("rev")
def _rev(ctx, eqn, invals):
  x = force(invals[0])
  if not is_sparse(x):
    return bind(eqn, [x])
  return [so.flip(x, eqn.params["dimensions"])]


@rule("slice")
def _slice(ctx, eqn, invals):
  x = force(invals[0])
  if not is_sparse(x):
    return bind(eqn, [x])
  p = eqn.params
  return [so.slice_(x, p["start_indices"], p["limit_indices"], p["strides"])]


@rule("dynamic_slice")
def _dynamic_slice(ctx, eqn, invals):
  vals = [force(v) for v in invals]
  x = vals[0]
  if not is_sparse(x) or len(vals) != 1 + x.ndim:
    return bind(eqn, ctx.policy.densify_operands(ctx.site(eqn), vals, "has no sparse rule here"))
  return [so.dynamic_slice(x, vals[1:], eqn.params["slice_sizes"])]


# -- calls and control flow ---------------------------------------------------------------------
def _open(j):
  """``(jaxpr, consts)`` of a Jaxpr or ClosedJaxpr."""
  return (j.jaxpr, j.consts) if hasattr(j, "consts") else (j, ())


@rule("jit", "pjit")
def _pjit(ctx, eqn, invals):
  jaxpr, consts = _open(eqn.params["jaxpr"])
  return ctx.eval(jaxpr, consts, invals)


@rule("closed_call", "core_call")
def _call(ctx, eqn, invals):
  jaxpr, consts = _open(eqn.params["call_jaxpr"])
  return ctx.eval(jaxpr, consts, invals)


@rule("remat2", "checkpoint")
def _remat(ctx, eqn, invals):
  jaxpr, consts = _open(eqn.params["jaxpr"])
  return ctx.eval(jaxpr, consts, invals)


@rule("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr")
def _custom_call(ctx, eqn, invals):
  """Operands that are dense once evaluated (a pending product of a sparse array, say)
  keep the function's own derivative rule: the original primitive is bound. With a
  sparse operand the primal body is evaluated; JAX then differentiates the sparse
  implementation (so a rule such as ReLU's gradient 0 at 0 is not kept there)."""
  invals = [force(v) for v in invals]
  if not any(is_sparse(v) for v in invals):
    return bind(eqn, invals)
  j = eqn.params.get("call_jaxpr", eqn.params.get("fun_jaxpr"))
  jaxpr, consts = _open(j)
  return ctx.eval(jaxpr, consts, invals)


def _forced(vals):
  return [force(v) for v in vals]


@rule("cond")
def _cond(ctx, eqn, invals):
  branches = eqn.params["branches"]
  index, *operands = invals
  index = force(index)
  if is_concrete(index):
    k = int(np.clip(np.asarray(index), 0, len(branches) - 1))
    jaxpr, consts = _open(branches[k])
    return ctx.eval(jaxpr, consts, operands)
  operands = _forced(operands)

  def branch(k):
    jaxpr, consts = _open(branches[k])
    return lambda ops_: _forced(ctx.eval(jaxpr, consts, list(ops_)))

  shapes = [jax.eval_shape(branch(k), operands) for k in range(len(branches))]
  keep = []
  for outs in zip(*shapes):
    first = outs[0]
    keep.append(all(is_sparse(o) for o in outs) and all(
        o.format == first.format and o.shape == first.shape and o.nse == first.nse
        and o.dtype == first.dtype for o in outs))

  def final(k):
    fn = branch(k)

    def run(ops_):
      outs = fn(ops_)
      return [o if kept else _dense(ctx, eqn, o, "returns sparse results whose layouts differ "
                                    "between branches (or are dense in one)")
              for o, kept in zip(outs, keep)]
    return run

  return list(jax.lax.switch(index, [final(k) for k in range(len(branches))], operands))


def _dense(ctx, eqn, v, why):
  return ctx.policy.densify_operands(ctx.site(eqn), [v], why)[0] if is_sparse(v) else v


LAZY_DENSE = frozenset({"dot_general", "mul", "neg", "transpose", "reduce_sum",
                        "broadcast_in_dim", "squeeze", "reshape", "div", "add", "sub", "add_any",
                        "select_n", *_UNARY, *_BINARY})
"""Primitives whose rule also runs on dense operands (they build lazy values)."""


from . import _control, _conv  # noqa: E402,F401  (they register the loop and conv rules)
