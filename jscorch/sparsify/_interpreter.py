"""Evaluates a jaxpr whose values may be SparseArrays or lazy products (see ``_fusion``).

Each equation goes to its rule in :data:`jscorch.sparsify._rules.RULES` when one of
its operands is sparse (or lazy, for the primitives that build lazy values);
otherwise the primitive is bound as is, so dense code runs unchanged. A sparse
operand of a primitive without a rule is densified under ``densify=True`` (one
``SparseEfficiencyWarning``) or raises :class:`SparsifyError`. Errors raised by a
rule get a note naming the primitive and the user's source line.
"""
from __future__ import annotations

import numpy as np
from jax.extend.core import DropVar, Literal

from jscorch.array import is_sparse
from jscorch.primitives._errors import SparseFormatError

from ._errors import Policy, Site, SparsifyError, describe, eqn_context
from ._fusion import Lazy, force, has_sparse


class Context:
  """The state of one sparsify evaluation: the densify policy."""

  def __init__(self, densify: bool):
    self.policy = Policy(densify)
    self.stack = []          # the call equations being evaluated (for source lines)

  def site(self, eqn) -> Site:
    return Site(eqn, self.stack)

  def eval(self, jaxpr, consts, args) -> list:
    return eval_jaxpr(self, jaxpr, consts, args)


def read_literal(v: Literal):
  return np.asarray(v.val, dtype=v.aval.dtype)


def eval_jaxpr(ctx: Context, jaxpr, consts, args) -> list:
  """Runs ``jaxpr`` on values that may be sparse or lazy; returns its (maybe lazy) outputs."""
  env = {}

  def read(v):
    return read_literal(v) if isinstance(v, Literal) else env[v]

  for var, val in zip(jaxpr.constvars, consts):
    env[var] = val
  assert len(jaxpr.invars) == len(args), (len(jaxpr.invars), len(args))
  for var, val in zip(jaxpr.invars, args):
    env[var] = val
  for eqn in jaxpr.eqns:
    outs = apply(ctx, eqn, [read(v) for v in eqn.invars])
    for var, val in zip(eqn.outvars, outs):
      if not isinstance(var, DropVar):
        env[var] = val
  return [read(v) for v in jaxpr.outvars]


def bind(eqn, args) -> list:
  """Binds the equation's primitive on (dense) ``args`` with its own parameters."""
  params = eqn.primitive.get_bind_params(eqn.params)
  if isinstance(params, tuple):        # older JAX: (subfuns, params)
    subfuns, params = params
    args = [*subfuns, *args]
  with eqn_context(eqn):
    out = eqn.primitive.bind(*args, **params)
  return list(out) if eqn.primitive.multiple_results else [out]


def apply(ctx: Context, eqn, invals) -> list:
  from ._rules import LAZY_DENSE, RULES  # noqa: PLC0415 (the rules use this module)
  name = eqn.primitive.name
  sparse_in = any(has_sparse(v) for v in invals)
  lazy_in = any(isinstance(v, Lazy) for v in invals)
  rule = RULES.get(name)
  if rule is not None and (sparse_in or name in LAZY_DENSE or (lazy_in and name in INLINED)):
    ctx.stack.append(eqn)
    try:
      return rule(ctx, eqn, invals)
    except SparsifyError:
      raise
    except SparseFormatError:
      args = [force(v) for v in invals]
      if not any(is_sparse(v) and v.format.blocks for v in args):
        raise
      # The op behind the rule does not handle blocked formats (docs/blocks.md): like a
      # primitive without a rule, densify if allowed, else say so (SparsifyError).
      args = ctx.policy.densify_operands(
          ctx.site(eqn), args,
          "has no rule for blocked operands (docs/blocks.md lists what they support)")
      return bind(eqn, args)
    except Exception as e:
      if not getattr(e, "_jscorch_sparsify_noted", False):
        e._jscorch_sparsify_noted = True
        e.add_note(f"(raised by js.sparsify while evaluating primitive "
                   f"{describe(Site(eqn, ctx.stack[:-1]))} with sparse or lazy operands)")
      raise
    finally:
      ctx.stack.pop()
  args = [force(v) for v in invals]
  if sparse_in:
    args = ctx.policy.densify_operands(ctx.site(eqn), args, "has no sparse rule")
  return bind(eqn, args)


INLINED = frozenset({"jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint",
                     "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})
"""Call-like primitives whose body is evaluated inline by the interpreter."""


def output(ctx: Context, value, what: str = "returned"):
  """A final value: lazy values are evaluated (densifying only if they must)."""
  del ctx, what
  return force(value)


def is_dense_value(v) -> bool:
  return not is_sparse(v) and not isinstance(v, Lazy)


__all__ = ["Context", "eval_jaxpr", "bind", "apply", "output", "INLINED"]
