"""Process-wide settings of jscorch (re-exported as ``jscorch.config``).

Attributes:
  lowering: ``"auto"`` (the first backend that supports an einsum, else the portable
    lowering), ``"portable"``, or a backend's name (``"c"``, ``"pallas"``; ``"kernel"``
    is an alias of ``"c"``): only that backend, else portable (``"pallas"`` on the CPU
    runs Pallas' interpreter). See
    :mod:`jscorch.primitives.backends`. Initialised from ``$JSCORCH_LOWERING``.
    Changing it clears JAX's compilation caches, so functions compiled before the
    change are lowered again with the new choice. The traced program (the jaxpr)
    never depends on it, only its lowering does.
  checkify_capacity: also emit a ``checkify`` check when a sparse result's
    capacity overflows under ``jit`` (the values are poisoned with NaN either way).

Example:
  >>> import jscorch as js
  >>> js.config.lowering in ("auto", "c", "portable")
  True
"""
from __future__ import annotations

import contextlib
import os

from ._errors import SparseFormatError

#: Built-in choices; registered backends add their names.
LOWERINGS = ("auto", "portable", "c", "kernel")


def lowerings() -> tuple[str, ...]:
  """Every accepted value of ``lowering``: the built-in ones and registered backends."""
  from . import backends  # (a leaf module: nothing of it imports settings)
  return tuple(dict.fromkeys(LOWERINGS + backends.names()))


class Settings:
  __slots__ = ("_lowering", "checkify_capacity")

  def __init__(self):
    self._lowering = "auto"
    self.lowering = os.environ.get("JSCORCH_LOWERING", "auto")
    self.checkify_capacity = False

  @property
  def lowering(self) -> str:
    return self._lowering

  @lowering.setter
  def lowering(self, value: str):
    if value not in lowerings():
      raise SparseFormatError(
          f"jscorch.config.lowering: got {value!r}, expected one of {lowerings()}.")
    from . import backends
    value = backends.ALIASES.get(value, value)
    if value != self._lowering:
      import jax
      jax.clear_caches()
      for hook in _on_change:
        hook()
    self._lowering = value

  @contextlib.contextmanager
  def using(self, lowering: str):
    """Sets ``lowering`` inside a ``with`` block; always restored (each change clears JAX's
    caches: compile ahead of time inside the block what should keep its lowering).

    Example:
      >>> import jscorch as js
      >>> with js.config.using("portable"):
      ...   js.config.lowering
      'portable'
    """
    before = self.lowering
    self.lowering = lowering
    try:
      yield self
    finally:
      self.lowering = before

  def __repr__(self):
    return f"Settings(lowering={self.lowering!r}, checkify_capacity={self.checkify_capacity})"


_on_change: list = []     # callbacks that drop caches keyed on the lowering choice
settings = Settings()
