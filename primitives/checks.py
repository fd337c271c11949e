"""Data checks on concrete level buffers: ranges, ``pos`` monotonicity, order, uniqueness.

Constructors run these when their inputs are concrete (not traced); under ``jit``
out-of-range coordinates are padding by definition and nothing is checked. The
checks run in numpy, one batch element at a time, and raise
:class:`SparseFormatError` naming the level, the position and the fix. Each level
type checks its own buffers (``Level.check``, in ``formats/``); this module walks the
levels and checks what spans them: storage order and uniqueness of the entries.
"""
from __future__ import annotations

import numpy as np

from ._errors import SparseFormatError
from .formats.level import first_duplicate as _first_duplicate
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
  live = np.ones(1, bool)                      # the one root position
  rows = np.zeros((1, 0), np.int64)            # coordinates of every position of this level
  for k, lvl in enumerate(lay.format.levels):
    bufs = tuple(next(it) for _ in lvl.buffers)
    parent, crd, live = lvl.check(bufs, live, caps[k], sizes[k], k, func, where)
    rows = _extend(rows, parent, crd)
  leaf_rows = rows[live] if lay.format.levels else None
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
  """The coordinates of every position of the next level: its parent's row, then its own."""
  parent = np.asarray(parent, np.int64)
  crd = np.asarray(crd).reshape(-1, 1).astype(np.int64)
  if not len(rows):                            # no parent position: every child is padding
    return np.zeros((len(crd), rows.shape[1] + 1), np.int64)
  return np.concatenate([rows[np.clip(parent, 0, len(rows) - 1)], crd], axis=1)


def _lex_compare(a, b):
  """Row-wise sign of a - b in lexicographic order."""
  out = np.zeros(len(a), np.int64)
  for j in reversed(range(a.shape[1])):
    s = np.sign(a[:, j].astype(np.int64) - b[:, j])
    out = np.where(s != 0, s, out)
  return out


def _row(r):
  return tuple(int(v) for v in r)


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
