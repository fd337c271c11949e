"""``js.einsum``: Einstein summation over any mix of sparse and dense operands."""
from __future__ import annotations

import string

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jscorch import _static
from jscorch.array import SparseArray, is_sparse
from jscorch.ops.coalesce import coalesced
from jscorch.primitives import checks, einsum_kernel, einsum_portable
from jscorch.primitives._errors import CapacityRequiredError, SparseCapacityError, SparseFormatError
from jscorch.primitives.einsum import einsum_bind
from jscorch.primitives.einsum_spec import DENSE_OUT, SAMPLED_OUT, SPARSE_OUT, EinsumSpec, Operand
from jscorch.primitives.formats import Format, FormatLike, compressed, dense, resolve_format
from jscorch.primitives.layout import Layout
from jscorch.primitives.planner import make_plan, pinned
from jscorch.primitives.settings import settings

_LETTERS = string.ascii_letters
_ELLIPSIS_BASE = 1000      # ids of '...' dimensions, counted from the right


def einsum(subscripts: str, *operands, out_format: FormatLike | str | None = None,
           nse: int | None = None, work: int | None = None):
  """Einstein summation where any operand may be a :class:`SparseArray`.

  Follows ``jnp.einsum``'s rules (implicit/explicit output, repeated and summed
  indices, ``...`` broadcasting). The output format is inferred (Scorch):

  * **sampled** — the output has exactly the indices of a sparse operand (up to
    order): the result has that operand's pattern (SDDMM ``ij,ik,jk->ij``,
    ``A * X``, ``A * B``); no dense intermediate is formed;
  * **sparse** — two or more sparse operands multiply and every output index is
    one of their batch or sparse indices (``ij,jk->ik`` for sparse A, B): a new
    CSR-like pattern with capacity ``nse``;
  * **dense** otherwise (SpMV, SpMM, MTTKRP, reductions).

  Args:
    subscripts: the einsum expression, e.g. ``"ij,jk->ik"``.
    *operands: dense arrays and SparseArrays (any format, batch and block dims; one
      with no sparse dimension takes part as its dense value).
    out_format: ``"dense"`` to force a dense result, or a format (object or name)
      for a new sparse pattern. An all-dense level format (``js.Format(js.dense,
      js.dense)``, any mode ordering) stores every coordinate of the dense result
      (no capacity needed). When no operand is sparse, the dense result is stored
      in ``out_format`` (its nonzeros; ``nse`` is then required under ``jit``); so
      is the result when the operands cannot give that layout (CSR for SpMM,
      whose rows are dense).
    nse: capacity of a new sparse result (static), per batch element. Eager calls
      compute the exact size when omitted; under ``jit`` it is required. Inside
      ``vmap`` it is the capacity of each mapped element.
    work: capacity of the intermediate join when two sparse operands contract
      over an index (portable lowering; the entries of A times the matching
      entries of B, summed over batch elements of a batched operand; inside
      ``vmap``, of each mapped element). Eager calls size it exactly; under
      ``jit`` it is required for such products. The same capacities serve the
      gradients and tangents. Overflow of ``nse`` or ``work`` poisons the result
      (and its tangents and cotangents) with NaN (see
      :mod:`jscorch.primitives.capacity`).

  Returns:
    A dense array or a :class:`SparseArray`.

  Raises:
    ValueError: malformed subscripts, operand count or rank mismatch, mismatched
      sizes, output indices absent from the inputs, missing capacities under jit.
    TypeError: an operand that is not an array.

  Example:
    >>> import jax, jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., 2.]]))
    >>> js.einsum("ij,jk->ik", A, jnp.ones((2, 3)))
    Array([[1., 1., 1.],
           [2., 2., 2.]], dtype=float32)
    >>> js.einsum("ij,ij->ij", A, jnp.full((2, 2), 3.)).data
    Array([3., 6.], dtype=float32)
  """
  func = "einsum"
  if not isinstance(subscripts, str):
    raise TypeError(f"{func}: subscripts must be a string like 'ij,jk->ik'; got "
                    f"{type(subscripts).__name__}.")
  ops = [_as_operand(x, k, func) for k, x in enumerate(operands)]
  if ops and all(x.dtype == jnp.bool_ for x in ops):   # as jnp: any product true (int32 count)
    counts = einsum(subscripts, *(x.astype(jnp.int32) for x in ops), out_format=out_format,
                    nse=nse, work=work)
    return counts != 0
  in_ids, out_ids = _parse(subscripts, ops, func)
  sizes = _sizes(in_ids, ops, subscripts, func)
  ops = [_prepare_dense(x, ids, sizes) if not is_sparse(x) else x for x, ids in zip(ops, in_ids)]
  in_ids = [tuple(dict.fromkeys(ids)) if not is_sparse(x) and len(set(ids)) < len(ids) else ids
            for x, ids in zip(operands, in_ids)]
  if any(is_sparse(x) and x.format.blocks for x in ops):     # BSR: on the block views
    from jscorch._block_einsum import block_einsum  # noqa: PLC0415 (it calls this function)
    return block_einsum(einsum, ops, in_ids, out_ids, sizes, out_format, nse, work, func)
  if _all_dense_levels(out_format) or not any(is_sparse(x) for x in ops):
    # Every coordinate stored (all-dense levels), or no sparse operand to take a pattern
    # from: the dense result, then stored in out_format.
    if any(is_sparse(x) for x in ops):
      result = einsum(subscripts, *operands, out_format="dense", work=work)
    else:
      result = _dense_einsum(ops, in_ids, out_ids)
    if out_format is None or isinstance(out_format, str) and out_format.lower() == "dense":
      return result
    return _stored_in(result, out_format, out_ids, ops, in_ids, nse, func)
  dtype = jnp.result_type(*[x.dtype for x in ops])
  ops = [x.astype(dtype) for x in ops]
  kind, out_layout, pattern, ops = _infer_output(ops, in_ids, out_ids, sizes, out_format, func)
  if kind == STORED_OUT:
    result = einsum(subscripts, *operands, out_format="dense", work=work)
    return _stored_in(result, out_format, out_ids, ops, in_ids, nse, func)
  if kind == SPARSE_OUT and out_layout.format.n_block_levels:   # rows of dense vectors
    from jscorch.ops import layout as ops_layout  # noqa: PLC0415 (ops_layout calls einsum)
    rows = ops_layout.einsum_rows(subscripts, operands, ops, in_ids, out_ids, out_layout,
                                  nse, work)
    if rows is not None:
      return rows
  spec_ops = tuple(Operand(tuple(ids), x.layout if is_sparse(x) else None)
                   for x, ids in zip(ops, in_ids))
  flat = []
  for x in ops:
    flat += [x.data, *x.indices] if is_sparse(x) else [x]
  size_pairs = tuple(sorted(sizes.items()))
  spec = pinned(EinsumSpec(spec_ops, tuple(out_ids), size_pairs, kind, out_layout, 0))
  spec = _with_capacities(spec, flat + list(pattern), nse, work, func)
  result = einsum_bind(spec, *flat, *pattern)
  if settings.checkify_capacity:
    _check_capacities(spec, flat + list(pattern))
  if kind == DENSE_OUT:
    return result[0]
  lay = spec.out_layout
  indices = pattern if kind == SAMPLED_OUT else result[1:]
  return SparseArray._make(result[0], indices, lay.format, lay.shape)


def _as_operand(x, k, func):
  if is_sparse(x):
    # no sparse dimension (all batch / block dims): the one stored block is the dense value
    return x.todense() if not x.n_sparse else x
  if isinstance(x, (jax.Array, np.ndarray, np.generic, int, float, complex, bool)) or \
      hasattr(x, "__jax_array__"):
    return jnp.asarray(x)
  raise TypeError(f"{func}: operand {k} must be an array or a SparseArray; got "
                  f"{checks.describe(x)}.{checks.conversion_hint(x)}")


def _parse(subscripts: str, ops, func):
  text = subscripts.replace(" ", "")
  if "->" in text:
    lhs, rhs = text.split("->", 1)
  else:
    lhs, rhs = text, None
  terms = lhs.split(",")
  if len(terms) != len(ops):
    raise ValueError(f"{func}: subscripts {subscripts!r} name {len(terms)} operand(s) but "
                     f"{len(ops)} were given.")
  for term in terms + ([rhs] if rhs is not None else []):
    bad = set(term.replace("...", "")) - set(_LETTERS)
    if bad or term.replace("...", "").count(".") or term.count("...") > 1:
      raise ValueError(f"{func}: invalid character(s) {sorted(bad) or ['.']} in subscripts "
                       f"{subscripts!r}; use letters a-z, A-Z and at most one '...' per term.")
  in_ids, n_ell = [], 0
  for k, (term, x) in enumerate(zip(terms, ops)):
    ids = _term_ids(term, x, k, subscripts, func)
    n_ell = max(n_ell, sum(1 for i in ids if i >= _ELLIPSIS_BASE))
    in_ids.append(ids)
  ell = [_ELLIPSIS_BASE + n_ell - 1 - j for j in range(n_ell)]
  if rhs is None:
    counts = {}
    for ids in in_ids:
      for i in ids:
        counts[i] = counts.get(i, 0) + 1
    letters = sorted((i for i, c in counts.items() if c == 1 and i < _ELLIPSIS_BASE),
                     key=lambda i: _LETTERS[i])
    out = ell + letters
  else:
    if rhs.count("...") and not n_ell and "..." not in lhs:
      raise ValueError(f"{func}: output of {subscripts!r} uses '...' but no input does.")
    out = []
    for part in rhs.split("..."):
      out.append([_LETTERS.index(c) for c in part])
    out = out[0] + (ell + out[1] if len(out) > 1 else [])
    if len(set(out)) != len(out):
      raise ValueError(f"{func}: output subscripts of {subscripts!r} repeat an index.")
    present = {i for ids in in_ids for i in ids}
    missing = [_LETTERS[i] for i in out if i not in present and i < _ELLIPSIS_BASE]
    if missing:
      raise ValueError(f"{func}: output index {missing} of {subscripts!r} appears in no "
                       "input; every output index must come from an operand.")
  return in_ids, out


def _term_ids(term, x, k, subscripts, func):
  ndim = x.ndim
  if "..." in term:
    left, right = term.split("...")
    n_ell = ndim - len(left) - len(right)
    if n_ell < 0:
      raise ValueError(f"{func}: operand {k} has rank {ndim} but term {term!r} of "
                       f"{subscripts!r} names more dimensions.")
    ids = [_LETTERS.index(c) for c in left] + \
        [_ELLIPSIS_BASE + n_ell - 1 - j for j in range(n_ell)] + [_LETTERS.index(c) for c in right]
  else:
    ids = [_LETTERS.index(c) for c in term]
    if len(ids) != ndim:
      raise ValueError(f"{func}: operand {k} has rank {ndim} (shape "
                       f"{tuple(x.shape)}) but term {term!r} of {subscripts!r} "
                       f"names {len(ids)} dimensions.")
  return ids


def _sizes(in_ids, ops, subscripts, func):
  sizes, first = {}, {}
  for k, (ids, x) in enumerate(zip(in_ids, ops)):
    for axis, (i, n) in enumerate(zip(ids, x.shape)):
      if i not in sizes or sizes[i] == 1 and not is_sparse(ops[first[i][0]]):
        if i in sizes and n == 1:
          continue
        sizes[i], first[i] = n, (k, axis)
      elif n != sizes[i] and not (n == 1 and not is_sparse(x)):
        k0, a0 = first[i]
        raise ValueError(
            f"{func}: index {_name(i)!r} of {subscripts!r} has size {sizes[i]} in operand {k0} "
            f"(axis {a0}) but {n} in operand {k} (axis {axis}); sizes of a shared index must "
            "agree (dense operands may broadcast from 1).")
  return sizes


def _name(i):
  return _LETTERS[i] if i < _ELLIPSIS_BASE else "..."


def _prepare_dense(x, ids, sizes):
  """Takes diagonals of repeated indices and broadcasts size-1 axes."""
  uniq = list(dict.fromkeys(ids))
  if len(uniq) < len(ids):
    x = jnp.einsum(x, list(ids), uniq)
  return jnp.broadcast_to(x, tuple(sizes[i] for i in uniq))


def _dense_einsum(ops, in_ids, out_ids):
  args = []
  for x, ids in zip(ops, in_ids):
    args += [x, list(ids)]
  return jnp.einsum(*args, list(out_ids))


def _all_dense_levels(out_format) -> bool:
  return isinstance(out_format, Format) and out_format.all_dense


def _stored_in(x, out_format, out_ids, ops, in_ids, nse, func) -> SparseArray:
  """The dense einsum result ``x`` stored in ``out_format``.

  An all-dense level format stores every coordinate: its values are ``x`` in storage
  order (a transpose and a reshape; no capacity needed). Other formats keep the
  nonzeros of ``x``, with capacity ``nse`` (computed from a concrete ``x``).
  """
  batch_ids = {i for op, ids in zip(ops, in_ids) if is_sparse(op) for i in ids[:op.n_batch]}
  n_batch = 0
  while n_batch < len(out_ids) and out_ids[n_batch] in batch_ids:
    n_batch += 1
  if isinstance(out_format, Format) and out_format.ndim != len(out_ids) and \
      not out_format.n_batch and not out_format.n_dense:
    n_dense = max(len(out_ids) - n_batch - out_format.n_sparse, 0)   # sparse path's counts
    fmt = resolve_format(out_format, x.ndim, n_batch=n_batch, n_dense=n_dense, func=func)
  else:
    fmt = resolve_format(out_format, x.ndim, func=func)
  probe = Layout(fmt, x.shape, 0)
  if fmt.all_dense:
    full = probe.fixed_nse
    lay = Layout.make(fmt, x.shape, full if nse is None else _static.static_int(nse, "nse", func),
                      func)
    nb, ns = fmt.n_batch, fmt.n_sparse
    perm = [*range(nb), *(nb + d for d in fmt.mode_ordering), *range(nb + ns, x.ndim)]
    data = jnp.transpose(x, perm).reshape(lay.data_shape)
    return SparseArray._make(data, (), fmt, x.shape)
  if nse is None and isinstance(x, jax.core.Tracer):
    raise CapacityRequiredError(
        f"{func}: out_format={out_format!r} asks for a sparse result of an einsum whose "
        f"operands give it no pattern; got nse=None under jit, expected a static int (the "
        f"number of nonzeros of the result, shape {x.shape}). Pass nse=, or "
        "out_format='dense'.")
  from jscorch.construct import from_dense  # construct imports nothing of einsum
  return from_dense(x, fmt, nse=nse)


def _infer_output(ops, in_ids, out_ids, sizes, out_format, func):
  """Returns ``(kind, out_layout, pattern buffers, operands)`` following Scorch's rules
  (the operand that gives a sampled output its pattern comes back coalesced)."""
  out = tuple(out_ids)
  if isinstance(out_format, str) and out_format.lower() == "dense":
    return DENSE_OUT, None, (), ops
  for k, (x, ids) in enumerate(zip(ops, in_ids)):
    if _may_sample(x, ids, out):
      x = coalesced(x)   # one slot per coordinate (a duplicate would get every one's sum)
      view = x.transpose([list(ids).index(i) for i in out]) if tuple(ids) != out else x
      if out_format is None or resolve_format(out_format, len(out), n_batch=view.n_batch,
                                              n_dense=view.n_dense, func=func) == view.format:
        return SAMPLED_OUT, view.layout, tuple(view.indices), ops[:k] + [x] + ops[k + 1:]
  sparse_ops = [(x, ids) for x, ids in zip(ops, in_ids) if is_sparse(x)]
  bound = {i for x, ids in sparse_ops for i in ids[:x.n_batch + x.n_sparse]}
  if out_format is None:
    # Scorch: an output index is dense when a dense operand, a batch dimension or a dense
    # level of a sparse operand ranges over it; a result of only dense indices is dense.
    dense_ids = {i for x, ids in zip(ops, in_ids) if not is_sparse(x) for i in ids}
    for x, ids in sparse_ops:
      dense_ids |= set(ids[:x.n_batch])
      sparse_ids = ids[x.n_batch:x.n_batch + x.n_sparse]
      dense_ids |= {sparse_ids[d] for d, lvl in zip(x.format.mode_ordering, x.format.levels)
                    if not lvl.has_crd}
    if len(sparse_ops) < 2 or not out or not set(out) <= bound or set(out) <= dense_ids:
      return DENSE_OUT, None, (), ops
  n_batch = 0
  batch_ids = {i for x, ids in sparse_ops for i in ids[:x.n_batch]}
  while n_batch < len(out) and out[n_batch] in batch_ids:
    n_batch += 1
  n_dense = 0
  while n_dense < len(out) - n_batch and out[len(out) - 1 - n_dense] not in bound:
    n_dense += 1
  if out_format is not None and (
      any(i not in bound for i in out[n_batch:len(out) - n_dense]) or
      not _fits(out_format, len(out), n_batch, n_dense)):
    return STORED_OUT, None, (), ops      # a layout the operands cannot give: store the dense
  if any(i not in bound for i in out[n_batch:len(out) - n_dense]):
    raise ValueError(f"{func}: a sparse result needs each output index to be a batch or sparse "
                     f"index of a sparse operand (or a trailing block dim); got output "
                     f"{''.join(_name(i) for i in out)}. Pass out_format='dense'.")
  n_sparse = len(out) - n_batch - n_dense
  if out_format is None:
    levels = (compressed,) if n_sparse == 1 else (dense,) + (compressed,) * (n_sparse - 1)
    fmt = Format(*levels, n_batch=n_batch, n_dense=n_dense)
  else:
    fmt = resolve_format(out_format, len(out), n_batch=n_batch, n_dense=n_dense, func=func)
  return SPARSE_OUT, Layout.make(fmt, tuple(sizes[i] for i in out), 0, func), (), ops


STORED_OUT = "stored"
"""``_infer_output``'s kind for an ``out_format`` no pattern of the operands can give (e.g.
CSR for ``ij,jk->ik`` of a sparse ``A`` and a dense ``X``, whose rows are dense): the dense
result is computed, then stored in ``out_format``."""


def _fits(out_format, ndim: int, n_batch: int, n_dense: int) -> bool:
  """Whether ``out_format`` resolves for a sparse result with these batch / block counts."""
  try:
    resolve_format(out_format, ndim, n_batch=n_batch, n_dense=n_dense, func="einsum")
  except SparseFormatError:
    return False
  return True


def _may_sample(x, ids, out) -> bool:
  """Whether sparse ``x`` can give the output its pattern (see ``_infer_output``)."""
  return is_sparse(x) and sorted(ids) == sorted(out) and len(set(ids)) == len(ids) and \
      _groups_kept(x, ids, tuple(out))


def _groups_kept(x, ids, out):
  nb, ns = x.n_batch, x.n_sparse
  pos = [out.index(i) for i in ids]
  return sorted(pos[:nb]) == list(range(nb)) and \
      sorted(pos[nb:nb + ns]) == list(range(nb, nb + ns))


def _check_capacities(spec: EinsumSpec, flat) -> None:
  """``checkify`` checks that the traced patterns fit ``work`` and ``nse`` (eager calls
  were sized exactly already)."""
  groups, pattern = spec.split_inputs(flat)
  index_buffers = [b for op, bufs in zip(spec.operands, groups) if op.sparse for b in bufs[1:]]
  if not spec.work and spec.out_kind != SPARSE_OUT or \
      not any(isinstance(x, jax.core.Tracer) for x in index_buffers + list(pattern)):
    return
  needed_work, needed_nse = einsum_portable.needed_capacities(spec, *flat)
  if spec.work:
    checkify.check(needed_work <= spec.work, f"einsum: the join of {spec} needs {{needed}} "
                   f"entries but its capacity is work={spec.work}; pass a larger work.",
                   needed=needed_work)
  if spec.out_kind == SPARSE_OUT:
    checkify.check(needed_nse <= spec.out_layout.nse, f"einsum: the result of {spec} needs "
                   f"{{needed}} stored entries but its capacity is nse={spec.out_layout.nse}; "
                   "pass a larger nse.", needed=needed_nse)


def _with_capacities(spec: EinsumSpec, flat, nse, work, func) -> EinsumSpec:
  """Fills in the capacities ``nse`` (sparse result) and ``work`` (portable join).

  Both depend on the patterns only: with concrete index buffers (eager calls, and
  jvp/grad of them) the exact sizes are computed — by the generated counting kernel
  for CSR x CSR when one exists (a host computation giving the same numbers), else by
  the portable join — and a given capacity that is too small raises. Under ``jit``
  they must be given; ``work`` is not needed by a 2-D product of two sparse operands
  into a new pattern, at a given pattern or into a dense result, batched alike
  (``einsum_portable.sized_without_work``): decided from the spec alone, so the traced
  program is the same whichever backend lowers it.
  """
  expands = make_plan(spec).expands
  needs_nse = spec.out_kind == SPARSE_OUT
  if not expands and not needs_nse:
    return spec
  groups, pattern = spec.split_inputs(flat)
  sparse_groups = [bufs for op, bufs in zip(spec.operands, groups) if op.sparse]
  index_buffers = [b for bufs in sparse_groups for b in bufs[1:]] + list(pattern)
  concrete = not any(isinstance(x, jax.core.Tracer) for x in index_buffers)
  dtype = next(bufs[0].dtype for bufs in groups)
  no_work = einsum_portable.sized_without_work(spec)
  fast = einsum_kernel.spgemm_plan(spec, dtype) if einsum_kernel.kernels_enabled() else None
  if concrete:
    if fast is not None:
      exact_nse, exact_work = einsum_kernel.spgemm_sizes(fast, sparse_groups[0][1:],
                                                         sparse_groups[1][1:])
    else:
      with jax.ensure_compile_time_eval():    # concrete patterns inside a jit trace
        exact_work, exact_nse = einsum_portable.exact_capacities(spec, *flat)
    for name, given, exact in (("nse", nse, exact_nse if needs_nse else None),
                               ("work", work, exact_work if expands else None)):
      if given is not None and exact is not None and \
          _static.static_int(given, name, func) < exact:
        raise SparseCapacityError(
            f"{func}: {spec} needs {name}={exact} but {name}={given} was given. Pass "
            f"{name}={exact} (or larger), or omit it in eager calls.")
    nse = exact_nse if nse is None else nse
    work = exact_work if work is None else work
  else:
    missing = []
    if needs_nse and nse is None:
      missing.append("nse= (capacity of the sparse result)")
    if expands and work is None and (not no_work or settings.checkify_capacity):
      missing.append("work= (capacity of the join of the sparse operands that contract: "
                     "at least the number of matching entry pairs)")
    if missing:
      raise CapacityRequiredError(
          f"{func}: {spec} multiplies sparse operands with a data-dependent result size; under "
          f"jit pass {' and '.join(missing)} as static ints, or call it eagerly once to learn "
          "the exact sizes.")
  if needs_nse:
    nse = _static.static_int(nse, "nse", func)
    lay = spec.out_layout
    spec = spec.replace(out_layout=Layout.make(lay.format, lay.shape, nse, func))
  # A join of no pairs still has one (padding) row: capacity 0 would read as "not sized".
  work = max(_static.static_int(work, "work", func), 1) if expands and work is not None else 0
  return spec.replace(work=work)
