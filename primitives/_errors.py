"""The error classes of jscorch, in one place.

Every user-facing error is one of these; each message names the function, what
was given, what was expected and how to fix it.
"""


class SparseFormatError(ValueError):
  """A format, shape, buffer layout or coordinate does not fit the rules."""


class SparseCapacityError(ValueError):
  """A sparse result needs more stored entries than its static capacity."""


class CapacityRequiredError(ValueError):
  """A result's size depends on the data (traced index buffers) and no capacity was given.

  Raised under ``jit`` by products of sparse operands with a new sparse result or a
  data-dependent join; pass the static capacities (``nse=``, ``work=``) it names.
  """


class SparseEfficiencyWarning(UserWarning):
  """An operation had to do something expensive (densify, fall back)."""


class SparsifyError(TypeError):
  """A sparse value reached an operation that has no sparse implementation.

  Raised by :func:`jscorch.sparsify` (without ``densify=True``) for a primitive
  without a sparse rule, a non-zero-preserving function of a sparse operand, or
  a shape change that a sparse layout cannot express.
  """
