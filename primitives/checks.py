"""Data checks on concrete level buffers: ranges, ``pos`` monotonicity, order, uniqueness.

Constructors run these when their inputs are concrete (not traced); under ``jit``
out-of-range coordinates are padding by definition and nothing is checked. The
checks run in numpy, one batch element at a time, and raise
:class:`SparseFormatError` naming the level, the position and the fix.
"""
from __future__ import annotations

import numpy as np

from ._errors import SparseFormatError
from .formats import COMPRESSED, DENSE
from .layout import Layout


def is_concrete(*arrays) -> bool:
  """True when every argument can be read on the host (no tracers)."""
  import jax.core
  return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def check_indices(lay: Layout, indices, func: str) -> None:
  """Validates concrete index buffers against the format's promises.

  Raises:
    SparseFormatError: a ``pos`` that does not start at 0, decreases or exceeds
      the level capacity; a coordinate out of range; a padding position whose
      coordinate is not the dimension size; entries out of order where the format
      is ordered; duplicates where it is unique.
  """
  host = [np.asarray(b) for b in indices]
  batch = lay.batch_shape
  for b in np.ndindex(*batch):
    _check_element(lay, [h[b] for h in host], func,
                   f" (batch element {b})" if batch else "")


def _check_element(lay, buffers, func, where):
  sizes, caps = lay.level_sizes, lay.capacities
  it = iter(buffers)
  used_parent = 1
  leaf_rows = None            # coordinates of used positions of the current level
  for k, lvl in enumerate(lay.format.levels):
    size, cap = sizes[k], caps[k]
    if lvl.kind == DENSE:
      rows = np.arange(used_parent * size)
      leaf_rows = _extend(leaf_rows, rows // max(size, 1), rows % max(size, 1))
      used_parent *= size
      continue
    if lvl.kind == COMPRESSED:
      pos, crd = next(it), next(it)
      if pos[0] != 0 or np.any(np.diff(pos) < 0) or pos[-1] > cap:
        raise SparseFormatError(
            f"{func}: pos of level {k}{where} must start at 0, never decrease and end at "
            f"most at {cap}; got pos={_short(pos)}. Build buffers with js.from_coo.")
      if np.any(pos[used_parent:] != pos[-1]):
        raise SparseFormatError(
            f"{func}: pos of level {k}{where} gives entries to padding parents (positions "
            f">= {used_parent}); got pos={_short(pos)}.")
      used = int(pos[-1])
      parent = np.repeat(np.arange(len(pos) - 1), np.diff(pos))
    else:
      crd = next(it)
      used = used_parent
      parent = np.arange(used)
    _check_crd(crd, used, size, k, func, where)
    if lvl.kind == COMPRESSED:
      _check_segments(crd[:used], parent, lvl, k, func, where)
    leaf_rows = _extend(leaf_rows, parent, crd[:used])
    used_parent = used
  fmt = lay.format
  if leaf_rows is not None and len(leaf_rows) > 1 and fmt.ordered:
    step = _lex_compare(leaf_rows[1:], leaf_rows[:-1])
    if np.any(step < 0):
      i = int(np.argmax(step < 0)) + 1
      raise SparseFormatError(
          f"{func}: entries{where} are not in storage order at entry {i}: "
          f"{_row(leaf_rows[i - 1])} then {_row(leaf_rows[i])}, but format {fmt!r} is "
          "ordered. Sort them (js.from_coo sorts) or use an unordered format.")
  if leaf_rows is not None and fmt.unique:
    row = _first_duplicate(leaf_rows)
    if row is not None:
      raise SparseFormatError(
          f"{func}: duplicate coordinate{where} {row}, but format {fmt!r} is unique. Sum "
          "them (js.from_coo sums duplicates) or use a non-unique format.")


def _extend(rows, parent, crd):
  crd = np.asarray(crd).reshape(-1, 1)
  return crd if rows is None else np.concatenate([rows[parent], crd], axis=1)


def _check_crd(crd, used, size, k, func, where):
  bad = (crd[:used] < 0) | (crd[:used] >= size)
  if np.any(bad):
    i = int(np.argmax(bad))
    raise SparseFormatError(
        f"{func}: coordinate out of range at level {k}{where}, position {i}: got "
        f"{int(crd[i])}, expected 0 <= crd < {size}. Fix the indices or the shape.")
  if np.any(crd[used:] != size):
    raise SparseFormatError(
        f"{func}: padding positions of level {k}{where} (from {used} on) must hold the "
        f"dimension size {size}; got {_short(crd[used:])}.")


def _check_segments(crd, parent, lvl, k, func, where):
  if len(crd) < 2:
    return
  same = parent[1:] == parent[:-1]
  step = np.sign(crd[1:].astype(np.int64) - crd[:-1])
  if lvl.ordered and np.any(same & (step < 0)):
    i = int(np.argmax(same & (step < 0))) + 1
    raise SparseFormatError(
        f"{func}: coordinates of level {k}{where} are unsorted within a segment at position "
        f"{i} ({int(crd[i - 1])} then {int(crd[i])}), but the level is ordered. Sort them "
        "or use compressed(ordered=False).")
  if lvl.unique and _first_duplicate(np.stack([parent, crd], 1)) is not None:
    raise SparseFormatError(
        f"{func}: repeated coordinate within a segment of level {k}{where}, but the level is "
        "unique. Sum duplicates or use compressed(unique=False).")


def _lex_compare(a, b):
  """Row-wise sign of a - b in lexicographic order."""
  out = np.zeros(len(a), np.int64)
  for j in reversed(range(a.shape[1])):
    s = np.sign(a[:, j].astype(np.int64) - b[:, j])
    out = np.where(s != 0, s, out)
  return out


def _first_duplicate(rows):
  """The first repeated row (as a tuple of ints), or None."""
  if len(rows) < 2:
    return None
  srt = rows[np.lexsort(rows.T[::-1])]
  dup = np.all(srt[1:] == srt[:-1], axis=1)
  return _row(srt[int(np.argmax(dup))]) if dup.any() else None


def _row(r):
  return tuple(int(v) for v in r)


def _short(a, n=8):
  a = np.asarray(a)
  body = ", ".join(str(int(v)) for v in a[:n])
  return f"[{body}{', ...' if a.size > n else ''}]"


def describe(x) -> str:
  """A short description of an operand for error messages: type, dtype and shape, never values.

  Example:
    >>> import numpy as np
    >>> describe(np.zeros((2, 3), np.float32))
    'ndarray(float32[2, 3])'
  """
  name = type(x).__name__
  shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
  if shape is None:
    text = repr(x)
    return f"{name} {text}" if len(text) <= 40 else name
  try:
    dtype = np.dtype(dtype).name
  except TypeError:
    dtype = str(dtype)
  return f"{name}({dtype}[{', '.join(map(str, shape))}])"


def conversion_hint(x) -> str:
  """How to turn another library's sparse matrix into a jscorch operand ('' for others).

  Example:
    >>> import scipy.sparse as sp
    >>> conversion_hint(sp.eye(2, format="csr"))
    ' Convert it with js.from_scipy(x) (or x.toarray() for a dense array).'
  """
  module = type(x).__module__ or ""
  if module.startswith("scipy.sparse"):
    return " Convert it with js.from_scipy(x) (or x.toarray() for a dense array)."
  if module.startswith("jax.experimental.sparse"):
    return (" Convert it with js.from_bcoo(x) (a BCSR: js.from_bcoo(x.to_bcoo())), or "
            "x.todense() for a dense array.")
  return ""
