"""The error class of :mod:`jscorch.distributed`."""
from jscorch.primitives._errors import SparseFormatError


class SparseShardingError(SparseFormatError):
  """A mesh, mesh axis, sharding or mesh context does not fit a sharded sparse array."""
