"""Lazy values of the sparsify interpreter, and their fusion into one ``js.einsum``.

Two kinds of value are kept unevaluated until something needs them:

* :class:`Product` — a *pending einsum*: terms (a leaf value and one index id per
  dimension) and output ids. ``dot_general``, ``mul``, ``neg``, ``transpose``,
  ``reduce_sum``, ``broadcast_in_dim``, ``squeeze``, size-1 ``reshape`` and the
  division by a dense value extend it without computing anything, so a chain of
  products over a sparse pattern becomes **one** multi-operand ``js.einsum`` when
  it is consumed by anything else or returned (Scorch's kernel fusion):
  ``((U @ V.T) * A) @ X`` is the single plan ``ik,jk,ij,jl->il``, and the sampled
  product ``(U @ V.T) * A`` is never formed.
* :class:`Map` — an elementwise primitive whose result is dense in the dense
  semantics (``exp``, ``x + 1``, a mask comparison ...). Multiplied by a sparse
  operand, it is evaluated only at that operand's stored entries (its dense
  leaves are *sampled* there with a sampled einsum), so ``A * jnp.exp(s[:, None] +
  t[None, :])`` never forms the dense ``n × n`` array. Consumed by anything else
  it is materialised: an elementwise expression of sparse values of one pattern
  (coalesced) and concrete scalars that is 0 where they are 0 (``jax.nn.elu``,
  ``x / (1 + abs(x))``) is evaluated at that pattern and stays sparse; any other
  dependence on a sparse value is a densification (an error unless ``densify=True``).

Dense-only lazy values replay the original primitives when materialised
(``thunk``), so code that never meets a sparse value runs exactly as before.
"""
from __future__ import annotations

import itertools
import math
import string

import jax
import jax.numpy as jnp
import numpy as np

from jscorch.array import SparseArray, is_sparse
from jscorch.einsum import einsum as js_einsum
from jscorch.ops.unary import valid_mask
from jscorch.primitives._errors import CapacityRequiredError
from jscorch.primitives.checks import is_concrete
from jscorch.primitives.union import canonical_format

from ._errors import SparsifyError, describe

_LETTERS = string.ascii_letters
_MAX_DEPTH = 48          # longer lazy chains are materialised eagerly (Python recursion)
_next_id = itertools.count()


def fresh() -> int:
  """A new index id (ids are global, so merging two expressions never clashes)."""
  return next(_next_id)


# -- lazy values ------------------------------------------------------------------------
class Lazy:
  """A value evaluated on first use (memoised)."""
  shape: tuple[int, ...]
  dtype: np.dtype
  has_sparse: bool
  depth: int
  _UNSET = object()

  def __init__(self):
    self._value = Lazy._UNSET

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def materialize(self):
    if self._value is Lazy._UNSET:
      self._value = self._compute()
    return self._value

  def _compute(self):   # pragma: no cover - abstract
    raise NotImplementedError


def has_sparse(v) -> bool:
  """True when ``v`` is a SparseArray or a lazy value that depends on one."""
  return is_sparse(v) or (isinstance(v, Lazy) and v.has_sparse)


def force(v):
  """``v`` evaluated: a dense array or a SparseArray."""
  return v.materialize() if isinstance(v, Lazy) else v


def depth(v) -> int:
  return v.depth if isinstance(v, Lazy) else 0


class Product(Lazy):
  """A pending einsum: ``out[out ids] = sum over other ids of prod(term[ids])``.

  Attributes:
    terms: ``(leaf, ids)`` pairs; a leaf is a dense array, a SparseArray or a
      :class:`Map`; ``ids`` has one id per dimension of the leaf.
    out: output ids (an id in no term is a broadcast dimension).
    sizes: ``{id: size}`` for every id.
    thunk: for values computed from dense operands only: replays the original
      primitives (exact dense semantics).
  """

  def __init__(self, terms, out, sizes, dtype, *, thunk=None, policy=None, eqn=None):
    super().__init__()
    self.terms = tuple((v, tuple(ids)) for v, ids in terms)
    self.out = tuple(out)
    self.sizes = dict(sizes)
    self.dtype = np.dtype(dtype)
    self.shape = tuple(self.sizes[i] for i in self.out)
    self.has_sparse = any(has_sparse(v) for v, _ in self.terms)
    self.thunk = None if self.has_sparse else thunk
    self.policy = policy
    self.eqn = eqn
    self.depth = 1 + max((depth(v) for v, _ in self.terms), default=0)

  def _compute(self):
    if self.thunk is not None:
      return self.thunk()
    return materialize_product(self)

  @property
  def free(self) -> tuple[int, ...]:
    """Output ids bound by no term (broadcast dimensions)."""
    bound = {i for _, ids in self.terms for i in ids}
    return tuple(i for i in self.out if i not in bound)

  def relabel(self, new_out):
    """Terms and sizes with the output ids renamed to ``new_out``, all others fresh."""
    mapping = dict(zip(self.out, new_out))
    for _, ids in self.terms:
      for i in ids:
        if i not in mapping:
          mapping[i] = fresh()
    terms = [(v, tuple(mapping[i] for i in ids)) for v, ids in self.terms]
    sizes = {mapping[i]: s for i, s in self.sizes.items() if i in mapping}
    return terms, sizes


class Map(Lazy):
  """An elementwise primitive of lazy arguments (dense in the dense semantics).

  Arguments have the output's shape, a shape that broadcasts to it (size-1 dims,
  lower rank) or are scalars.
  """

  def __init__(self, prim, params, args, shape, dtype, *, policy, eqn, why):
    super().__init__()
    self.prim, self.params, self.args = prim, dict(params), tuple(args)
    self.shape, self.dtype = tuple(shape), np.dtype(dtype)
    self.has_sparse = any(has_sparse(a) for a in self.args)
    self.policy, self.eqn, self.why = policy, eqn, why
    self.depth = 1 + max((depth(a) for a in self.args), default=0)

  def _compute(self):
    leaves = zero_preserving_pattern(self)
    if leaves is not None:               # zero wherever its sparse leaves are: stays sparse
      return map_at_pattern(self, leaves)
    args = [force(a) for a in self.args]
    if any(is_sparse(a) for a in args):
      args = self.policy.densify_operands(self.eqn, args, self.why)
    return self.prim.bind(*args, **self.params)


def _evaluate(v, leaf, shape):
  """The elementwise expression ``v`` with each sparse leaf replaced by ``leaf(leaf)``, or
  None when ``v`` is not an elementwise expression of sparse leaves of its shape and
  concrete scalars (a sum, a transpose, a dense array, a traced scalar). ``shape``: that
  of the leaf values (``()`` at zero), to which scalars broadcast for primitives."""
  if is_sparse(v):
    return leaf(v)
  if isinstance(v, Map):
    vals = [_evaluate(a, leaf, shape) for a in v.args]
    if any(x is None for x in vals):
      return None
    return v.prim.bind(*[jnp.broadcast_to(x, shape) for x in vals], **v.params)
  if isinstance(v, Product) and v.has_sparse:
    vals = []
    for term, ids in v.terms:
      if ids != () and tuple(ids) != v.out:
        return None
      vals.append(_evaluate(term, leaf, shape))
    if any(x is None for x in vals):
      return None
    return math.prod([jnp.asarray(x).astype(v.dtype) for x in vals],
                     start=jnp.ones((), v.dtype))
  s = scalar_source(v)
  return None if s is None or not is_concrete(s) else jnp.asarray(s)


def zero_preserving_pattern(m: Map):
  """``{id(leaf): leaf coalesced}`` for the sparse leaves of ``m`` if ``m`` can be evaluated
  at their common (coalesced) pattern, or None.

  That is when ``m`` is an elementwise expression of sparse leaves of its own
  shape that share one pattern once coalesced, and concrete scalars, and is 0
  where its leaves are 0 (``jax.nn.elu``, ``x / (1 + |x|)``, a select on ``x >= 0``
  between ``x`` and ``a * x``): then it is 0 off the pattern. Duplicates are
  summed first (the expression is not linear in general).
  """
  if not m.has_sparse:
    return None
  leaves = []

  def at_zero(a):
    leaves.append(a)
    return jnp.zeros((), a.dtype)

  with jax.ensure_compile_time_eval():
    value = _evaluate(m, at_zero, ())
    if value is None or not bool(np.all(np.asarray(value) == 0)):
      return None
  if any(tuple(a.shape) != m.shape for a in leaves):
    return None
  coalesced = {}
  for a in leaves:
    if id(a) not in coalesced:
      coalesced[id(a)] = coalesce(a, m.policy)
  first = coalesced[id(leaves[0])]
  if not all(same_pattern(a, first) for a in coalesced.values()):
    return None
  return coalesced


def map_at_pattern(m: Map, coalesced) -> SparseArray:
  """``m`` evaluated on the values of its leaves coalesced to one pattern (see
  :func:`zero_preserving_pattern`); padding gets a safe value, then 0."""
  S = next(iter(coalesced.values()))
  valid = valid_entries(S, m.policy)
  data = _evaluate(m, lambda a: _safe(coalesced[id(a)].data, valid), S.data.shape)
  data = jnp.broadcast_to(data, S.data.shape)
  return S.with_data(jnp.where(valid, data, jnp.zeros((), data.dtype)).astype(m.dtype))


# -- building products -------------------------------------------------------------------
def as_product(v, *, policy=None) -> Product:
  """``v`` as a one-term product (a product is returned unchanged)."""
  if isinstance(v, Product):
    return v
  shape = tuple(np.shape(v)) if not isinstance(v, (Lazy, SparseArray)) else tuple(v.shape)
  ids = tuple(fresh() for _ in shape)
  dtype = v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype
  return Product([(v, ids)], ids, dict(zip(ids, shape)), dtype,
                 thunk=(lambda: force(v)), policy=policy)


def broadcast(p: Product, shape, dims, **kw) -> Product:
  """``broadcast_in_dim`` of a product: operand dim ``k`` becomes output dim ``dims[k]``."""
  shape = tuple(shape)
  out, sizes = [], dict(p.sizes)
  where = {d: k for k, d in enumerate(dims)}
  for d, n in enumerate(shape):
    k = where.get(d)
    if k is not None and p.sizes[p.out[k]] == n:
      out.append(p.out[k])
    else:                       # a new dimension, or a size-1 one broadcast to n
      i = fresh()
      sizes[i] = n
      out.append(i)
  return Product(p.terms, out, sizes, kw.pop("dtype", p.dtype), policy=p.policy, **kw)


def broadcast_to(p: Product, shape, **kw) -> Product:
  """numpy-style broadcast (leading dims added, size-1 dims expanded)."""
  lead = len(shape) - p.ndim
  return broadcast(p, shape, tuple(range(lead, len(shape))), **kw)


def multiply(a: Product, b: Product, shape, dtype, **kw) -> Product:
  """Elementwise product (numpy broadcasting) of two products."""
  a, b = broadcast_to(a, shape), broadcast_to(b, shape)
  out = tuple(fresh() for _ in shape)
  ta, sa = a.relabel(out)
  tb, sb = b.relabel(out)
  return Product(ta + tb, out, {**sa, **sb}, dtype, policy=a.policy or b.policy, **kw)


def dot_general(a: Product, b: Product, dimension_numbers, dtype, **kw) -> Product:
  """``lax.dot_general`` of two products."""
  (lc, rc), (lb, rb) = dimension_numbers
  lids = [fresh() for _ in range(a.ndim)]
  rids = [fresh() for _ in range(b.ndim)]
  for l, r in zip(tuple(lc) + tuple(lb), tuple(rc) + tuple(rb)):
    rids[r] = lids[l]
  ta, sa = a.relabel(lids)
  tb, sb = b.relabel(rids)
  out = [lids[d] for d in lb] + [lids[d] for d in range(a.ndim) if d not in lc and d not in lb] \
      + [rids[d] for d in range(b.ndim) if d not in rc and d not in rb]
  return Product(ta + tb, out, {**sa, **sb}, dtype, policy=a.policy or b.policy, **kw)


def transpose(p: Product, perm, **kw) -> Product:
  return Product(p.terms, [p.out[d] for d in perm], p.sizes, p.dtype, policy=p.policy, **kw)


def reduce_sum(p: Product, axes, dtype, **kw) -> Product:
  """Sums over output dims ``axes``; a broadcast dim contributes its size as a factor."""
  axes = set(int(a) for a in axes)
  free = set(p.free)
  terms = list(p.terms)
  factor = math.prod(p.sizes[p.out[d]] for d in axes if p.out[d] in free)
  if factor != 1:
    terms.append((np.asarray(factor, dtype), ()))
  out = [i for d, i in enumerate(p.out) if d not in axes]
  return Product(terms, out, p.sizes, dtype, policy=p.policy, **kw)


def squeeze(p: Product, dims, **kw) -> Product:
  dims = set(int(d) for d in dims)
  return Product(p.terms, [i for d, i in enumerate(p.out) if d not in dims], p.sizes, p.dtype,
                 policy=p.policy, **kw)


def reshape_unit(p: Product, new_shape, **kw):
  """A reshape that only inserts or removes size-1 dims, or None for any other reshape."""
  old = [(i, n) for i, n in zip(p.out, p.shape) if n != 1]
  if [n for _, n in old] != [n for n in new_shape if n != 1]:
    return None
  it = iter(old)
  out, sizes = [], dict(p.sizes)
  for n in new_shape:
    if n == 1:
      i = fresh()
      sizes[i] = 1
      out.append(i)
    else:
      out.append(next(it)[0])
  return Product(p.terms, out, sizes, p.dtype, policy=p.policy, **kw)


def scale(p: Product, factor, **kw) -> Product:
  """``factor * p`` for a scalar ``factor``."""
  return Product(p.terms + ((factor, ()),), p.out, p.sizes, p.dtype, policy=p.policy, **kw)


def pure_broadcast_source(v):
  """``(leaf, ids, product)`` when ``v`` is a dense leaf broadcast / transposed (no sums)."""
  if not isinstance(v, Product) or v.has_sparse or len(v.terms) != 1:
    return None
  leaf, ids = v.terms[0]
  if isinstance(leaf, Lazy) or len(set(ids)) != len(ids):
    return None
  if any(i not in v.out and v.sizes[i] != 1 for i in ids):
    return None
  return leaf, ids, v


def scalar_source(v):
  """The scalar that ``v`` is (a broadcast of), or None."""
  if isinstance(v, SparseArray):
    return None
  if not isinstance(v, Lazy):
    return v if np.shape(v) == () else None
  if v.has_sparse:
    return None
  if isinstance(v, Product) and len(v.terms) == 1 and v.terms[0][1] == ():
    return scalar_source(v.terms[0][0])
  if v.shape == ():
    return force(v)
  return None


def known_zero(v) -> bool:
  """True when ``v`` is (a broadcast of) a concrete scalar zero."""
  s = scalar_source(v)
  if s is None or not is_concrete(s):
    return False
  return bool(np.all(np.asarray(s) == 0))


def same_pattern(a: SparseArray, b: SparseArray) -> bool:
  """Same format, shape and capacity and the very same index buffers (so ``a.data`` and
  ``b.data`` align; also for blocked formats, which have no layout of their own)."""
  return (a.format, a.shape, a.nse) == (b.format, b.shape, b.nse) and \
      len(a.indices) == len(b.indices) and all(x is y for x, y in zip(a.indices, b.indices))


def coalesce(A: SparseArray, policy=None) -> SparseArray:
  """``A`` with duplicates summed (a no-op for unique formats; same capacity).

  With the evaluation's ``policy``, every array of one pattern coalesces to one
  shared pattern (the very same index buffers), so values computed from several
  of them still align (:func:`same_pattern`).
  """
  if A.format.unique:
    return A
  C = A.asformat(canonical_format(A.format))
  if policy is None:
    return C
  cache = vars(policy).setdefault("coalesce_cache", {})
  key = (A.layout, tuple(id(i) for i in A.indices))
  if key not in cache:
    cache[key] = (A.indices, C)     # keeps the buffers alive: ids stay unique
    return C
  return cache[key][1].with_data(C.data)


# -- sampling a value at a sparse pattern ---------------------------------------------------
def _safe(x, valid):
  """Padding leaves get a harmless value (0.5), so no infinity reaches a gradient."""
  x = jnp.asarray(x)
  if x.ndim == 0 or not jnp.issubdtype(x.dtype, jnp.inexact):
    return x
  return jnp.where(valid, x, jnp.asarray(0.5, x.dtype))


def sample_at(v, v_ids, S: SparseArray, S_ids, valid, policy, memo=None):
  """``v`` (with dims ``v_ids`` ⊆ ``S_ids``) at each stored entry of ``S``: `[*batch, nse, *block]`.

  Scalars stay scalars; a :class:`Map` is evaluated on its sampled arguments; a
  SparseArray with ``S``'s pattern gives its ``data``; anything else is read
  with one sampled einsum (at ``S``'s pattern, so nothing dense is formed).
  ``memo`` shares samples of a value used several times in one expression.
  """
  memo = {} if memo is None else memo
  key = (id(v), tuple(v_ids))
  if key not in memo:
    memo[key] = (v, _sample_at(v, v_ids, S, S_ids, valid, policy, memo))
  return memo[key][1]


def _sample_at(v, v_ids, S, S_ids, valid, policy, memo):
  if isinstance(v, Map):
    args = []
    for a in v.args:
      if np.shape(a) == () and not isinstance(a, Lazy):
        args.append(a)
        continue
      if tuple(a.shape) != v.shape:
        a = broadcast_to(as_product(a, policy=policy), v.shape)
      args.append(sample_at(a, v_ids, S, S_ids, valid, policy, memo))
    shape = np.broadcast_shapes(*[np.shape(a) for a in args])
    args = [jnp.broadcast_to(a, shape) if np.shape(a) != shape else a for a in args]
    return v.prim.bind(*args, **v.params)
  if scalar_source(v) is not None:
    return jnp.asarray(scalar_source(v))
  if is_sparse(v) and tuple(v_ids) == tuple(S_ids):
    v = coalesce(v, policy)      # a host coalesced from v's pattern shares its coalesced buffers
    if same_pattern(v, S):
      return _safe(v.data, valid)
  p = as_product(v, policy=policy)
  terms, sizes = p.relabel(v_ids)
  dtype = p.dtype
  as_bool = dtype == np.dtype(bool)
  if as_bool:
    dtype = np.dtype(np.int32)
    terms = [(_astype(t, dtype), ids) for t, ids in terms]
  ones = S.with_data(jnp.ones(S.data.shape, dtype))
  sizes.update(zip(S_ids, S.shape))
  sampled = Product([(ones, S_ids)] + terms, S_ids, sizes, dtype, policy=policy)
  out = materialize_product(sampled)
  assert is_sparse(out), "a product with a unique pattern operand and its ids is sampled"
  data = _safe(out.data, valid)
  return data != 0 if as_bool else data


def valid_entries(S: SparseArray, policy):
  """``valid_mask(S)``, computed once per pattern in one sparsify evaluation."""
  cache = getattr(policy, "valid_cache", None)
  if cache is None:
    return valid_mask(S)
  key = (S.layout, tuple(id(i) for i in S.indices))
  if key not in cache:
    cache[key] = (S.indices, valid_mask(S))     # keeps the buffers alive: ids stay unique
  return cache[key][1]


def fold_into(S: SparseArray, S_ids, m, m_ids, policy) -> SparseArray:
  """``S * m`` at ``S``'s pattern, ``m`` (dims ``m_ids`` ⊆ ``S_ids``) read only there."""
  S = coalesce(S, policy)
  valid = valid_entries(S, policy)
  vals = sample_at(m, m_ids, S, S_ids, valid, policy)
  data = S.data * vals.astype(S.dtype) if hasattr(vals, "astype") else S.data * vals
  return S.with_data(jnp.where(valid, data, jnp.zeros((), data.dtype)))


# -- materialising a product -------------------------------------------------------------------
def _astype(x, dtype):
  if is_sparse(x):
    return x if x.dtype == dtype else x.astype(dtype)
  x = jnp.asarray(x) if not isinstance(x, (np.ndarray, np.generic)) else x
  return x if x.dtype == dtype else x.astype(dtype)


def _groups_kept(S: SparseArray, ids, out) -> bool:
  nb, ns = S.n_batch, S.n_sparse
  pos = [out.index(i) for i in ids]
  return sorted(pos[:nb]) == list(range(nb)) and sorted(pos[nb:nb + ns]) == list(
      range(nb, nb + ns))


def _broadcast_sparse(S: SparseArray, lead, trail) -> SparseArray:
  """``S`` with new leading batch dims ``lead`` and trailing block dims ``trail``."""
  lead, trail = tuple(lead), tuple(trail)
  data = S.data.reshape(S.data.shape + (1,) * len(trail))
  data = jnp.broadcast_to(data, lead + S.data.shape + trail)
  indices = [jnp.broadcast_to(i, lead + i.shape) for i in S.indices]
  fmt = S.format.replace(n_batch=S.n_batch + len(lead), n_dense=S.n_dense + len(trail))
  return SparseArray._make(data, indices, fmt, lead + S.shape + trail)


def _letters(ids_list):
  names = {}
  for ids in ids_list:
    for i in ids:
      if i not in names:
        if len(names) == len(_LETTERS):
          raise SparsifyError("sparsify: a fused product needs more than 52 distinct indices; "
                              "got a larger expression. Split it with jax.jit boundaries.")
        names[i] = _LETTERS[len(names)]
  return names


def _reduces(terms, out) -> bool:
  """True when the product sums away dims of a sparse term that holds every output dim.

  Such a product is a reduction of that operand (``jnp.sum(A * B, axis=-1)``,
  ``A.T @ (A @ x)``): its result is dense, as ``A.sum(1)`` is, never a new pattern.
  A sparse term whose dims are all kept makes it a sampled product instead.
  """
  sparse = [set(ids) for v, ids in terms if is_sparse(v)]
  return not any(s <= set(out) for s in sparse) and any(set(out) <= s for s in sparse)


def _staged(p: Product, terms, out):
  """A dense-result product of several sparse terms, one sparse term first (or None).

  Under ``jit`` a join of sparse operands needs a static capacity; a reduction
  (``(A @ y) * (A @ y)``, ``A.T @ (A @ y)``) does not need the join: the sparse term
  that sums away the most dims is contracted first with the dense terms within its
  dims, into a dense partial result over the dims still needed.
  """
  best = None
  for k, (S, ids) in enumerate(terms):
    if not is_sparse(S):
      continue
    group = [k] + [j for j, (v, jids) in enumerate(terms)
                   if j != k and not is_sparse(v) and set(jids) <= set(ids)]
    rest = [t for j, t in enumerate(terms) if j not in group]
    needed = set(out).union(*[set(jids) for _, jids in rest])
    kept = tuple(dict.fromkeys(i for i in ids if i in needed))
    if len(kept) < len(set(ids)) and (best is None or len(kept) < len(best[1])):
      best = (group, kept, rest)
  if best is None:
    return None
  group, kept, rest = best
  partial = _call_einsum(p, [terms[j] for j in group], kept)
  assert not is_sparse(partial), "a sparse term with summed dims reduces to a dense partial"
  return _call_einsum(p, rest + [(partial, kept)], out)


def _call_einsum(p: Product, terms, out):
  """One ``js.einsum`` call; capacity problems under jit become a sparsify error or densify."""
  names = _letters([ids for _, ids in terms] + [out])
  subscripts = ",".join("".join(names[i] for i in ids) for _, ids in terms) + "->" + \
      "".join(names[i] for i in out)
  operands = [v for v, _ in terms]
  reduces = _reduces(terms, out)
  try:
    return js_einsum(subscripts, *operands, out_format="dense" if reduces else None)
  except CapacityRequiredError:
    staged = _staged(p, terms, out) if reduces else None
    if staged is not None:
      return staged
    if p.policy is None or not p.policy.densify:
      raise SparsifyError(
          f"sparsify: the product {subscripts!r} of sparse operands for primitive "
          f"{describe(p.eqn)} has a data-dependent number of entries; got traced index "
          "buffers (under jax.jit), expected concrete ones. Call the sparsified function "
          "outside jax.jit (eagerly the exact size is computed), or pass densify=True to "
          "js.sparsify to densify all but one sparse operand.") from None
    first = next(k for k, v in enumerate(operands) if is_sparse(v))
    dense = p.policy.densify_operands(
        p.eqn, [None if k == first else v for k, v in enumerate(operands)],
        "multiplies sparse operands into a result of data-dependent size under jit")
    operands = [v if k == first else dense[k] for k, v in enumerate(operands)]
    return js_einsum(subscripts, *operands)


def materialize_product(p: Product):
  """Evaluates a pending einsum with ONE ``js.einsum`` call (see the module docstring)."""
  policy = p.policy
  terms = []
  for v, ids in p.terms:
    v = v if isinstance(v, Map) else force(v)
    terms.append([v, ids])
  out = p.out
  _drop_unit_sums(terms, out)
  sparse = [k for k, (v, _) in enumerate(terms) if is_sparse(v)]
  anchor = next((k for k in sparse if set(terms[k][1]) <= set(out)
                 and len(set(terms[k][1])) == len(terms[k][1])), None)
  # Elementwise (Map) terms are evaluated at a sparse term's entries when one covers them.
  for k, (v, ids) in enumerate(terms):
    if not isinstance(v, Map):
      continue
    hosts = ([anchor] if anchor is not None else []) + sparse
    host = next((h for h in hosts if set(ids) <= set(terms[h][1])
                 and len(set(terms[h][1])) == len(terms[h][1])), None)
    if host is None:
      terms[k][0] = force(v)
    else:
      terms[host][0] = fold_into(terms[host][0], terms[host][1], v, ids, policy)
      terms[k] = None
  terms = [(_astype(v, p.dtype), ids) for v, ids in (t for t in terms if t is not None)]
  sparse = [k for k, (v, _) in enumerate(terms) if is_sparse(v)]
  anchor = next((k for k in sparse if set(terms[k][1]) <= set(out)
                 and len(set(terms[k][1])) == len(terms[k][1])), None)
  bound = {i for _, ids in terms for i in ids}
  free = [i for i in out if i not in bound]
  if not sparse:
    return _dense_einsum(terms, out, p.sizes)
  if anchor is not None:
    return _anchored(p, terms, out, sparse, anchor)
  inner = tuple(i for i in out if i in bound)
  result = _call_einsum(p, terms, inner)
  if free:
    assert not is_sparse(result), "a product with broadcast dims and no anchor is dense"
    result = _broadcast_dense(result, inner, out, p.sizes)
  return _astype(result, p.dtype)


def _drop_unit_sums(terms, out):
  """Size-1 dims of a sparse term summed away (a squeeze) are dropped from its layout."""
  from . import _sparse_ops  # noqa: PLC0415 (it imports this module)
  count = {}
  for _, ids in terms:
    for i in ids:
      count[i] = count.get(i, 0) + 1
  for t in terms:
    v, ids = t
    if not is_sparse(v):
      continue
    dims = [d for d, i in enumerate(ids) if i not in out and count[i] == 1 and v.shape[d] == 1]
    if dims:
      dropped = _sparse_ops.drop_unit_dims(v, dims)
      if dropped is not None:
        t[0], t[1] = dropped, tuple(i for d, i in enumerate(ids) if d not in dims)


def _dense_einsum(terms, out, sizes):
  args = []
  for v, ids in terms:
    args += [v, list(ids)]
  bound = {i for _, ids in terms for i in ids}
  inner = [i for i in out if i in bound]
  result = jnp.einsum(*args, inner) if terms else jnp.ones((), jnp.float32)
  return _broadcast_dense(result, inner, out, sizes)


def _broadcast_dense(x, inner, out, sizes):
  if list(inner) == list(out):
    return x
  x = jnp.expand_dims(x, [d for d, i in enumerate(out) if i not in inner])
  return jnp.broadcast_to(x, tuple(sizes[i] for i in out))


def _anchored(p: Product, terms, out, sparse, anchor):
  """A product that keeps the pattern of sparse term ``anchor`` (its dims are all kept)."""
  S, ids = terms[anchor]
  others = [t for k, t in enumerate(terms) if k != anchor]
  extra = [i for i in out if i not in ids]
  scaling = all(v_ids == () and not is_sparse(v) for v, v_ids in others)
  if not (scaling and tuple(ids) == tuple(out)):   # a scaling is linear: duplicates and
    S = coalesce(S, p.policy)                       # index buffers are kept as they are
  if scaling:
    if others:                     # A * scalar, transposes, expand_dims: no einsum at all
      S = S.with_data(S.data * math.prod([v for v, _ in others]))
    return _astype(_rearrange(p, S, ids, out), p.dtype)
  lead = []
  while len(lead) < len(extra) and out[len(lead)] == extra[len(lead)]:
    lead.append(extra[len(lead)])
  trail = [i for i in extra if i not in lead]
  ok = trail == list(out[len(out) - len(trail):]) if trail else True
  S_ids = tuple(lead) + tuple(ids) + tuple(trail)
  if ok and _groups_kept(S, ids, [i for i in out if i in ids]):
    if extra:
      S = _broadcast_sparse(S, [p.sizes[i] for i in lead], [p.sizes[i] for i in trail])
    return _astype(_call_einsum(p, [(S, S_ids)] + others, tuple(out)), p.dtype)
  # The pattern's dims are permuted across its groups, or size-1 dims are inserted
  # between them: evaluate sampled in the operand's own order, then rearrange.
  if all(p.sizes[i] == 1 for i in extra):
    value = _call_einsum(p, [(S, ids)] + others, tuple(ids))
    return _astype(_rearrange(p, value, ids, out), p.dtype)
  dense = p.policy.densify_operands(
      p.eqn, [S], f"gives a result of shape {p.shape} that no sparse layout of this operand's "
      "pattern can store") if p.policy else [S.todense()]
  return _astype(_call_or_dense([(dense[0], ids)] + others, out, p), p.dtype)


def _rearrange(p: Product, S: SparseArray, ids, out):
  """``S`` (dims ``ids``) rearranged to ``out``: a permutation plus broadcast or size-1 dims."""
  from . import _sparse_ops  # noqa: PLC0415 (it imports this module)
  extra = [i for i in out if i not in ids]
  kept = [i for i in out if i in ids]
  perm = [list(ids).index(i) for i in kept]
  if extra:
    lead = []
    while len(lead) < len(extra) and out[len(lead)] == extra[len(lead)]:
      lead.append(extra[len(lead)])
    trail = [i for i in extra if i not in lead]
    if (not trail or trail == list(out[len(out) - len(trail):])) and _groups_kept(S, ids, kept):
      S = S.transpose(perm) if perm != sorted(perm) else S
      return _broadcast_sparse(S, [p.sizes[i] for i in lead], [p.sizes[i] for i in trail])
    if not all(p.sizes[i] == 1 for i in extra):
      dense = p.policy.densify_operands(
          p.eqn, [S], f"broadcasts a sparse operand to shape {p.shape} along dimensions "
          "between its sparse ones") if p.policy else [S.todense()]
      return _broadcast_dense(jnp.transpose(dense[0], perm), kept, out, p.sizes)
  if perm != sorted(perm):
    S = S.transpose(perm) if _groups_kept(S, ids, kept) else _sparse_ops.transform(
        S, perm, "sparsify(transpose)")
  if extra:
    S = _sparse_ops.reshape(S, tuple(p.sizes[i] for i in out), "sparsify(reshape)")
  return S


def _call_or_dense(terms, out, p):
  if any(is_sparse(v) for v, _ in terms):
    bound = {i for _, ids in terms for i in ids}
    inner = tuple(i for i in out if i in bound)
    return _broadcast_dense(_call_einsum(p, terms, inner), inner, out, p.sizes)
  return _dense_einsum(terms, out, p.sizes)
