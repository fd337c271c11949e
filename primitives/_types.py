"""Type aliases shared by the whole package."""
from typing import Any, Sequence, Union

import numpy as np

Shape = tuple[int, ...]
ShapeLike = Union[int, Sequence[int]]
ArrayLike = Any      # jax.Array, np.ndarray, or a Python scalar
DTypeLike = Any      # anything jnp.dtype() accepts
