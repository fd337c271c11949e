"""Process-wide settings of jscorch (re-exported as ``jscorch.config``).

Attributes:
  lowering: ``"auto"`` (generated kernel where one applies, else portable),
    ``"kernel"`` or ``"portable"``. Initialised from ``$JSCORCH_LOWERING``.
    Changing it clears JAX's compilation caches, so functions compiled before the
    change are lowered again with the new choice.
  checkify_capacity: also emit a ``checkify`` check when a sparse result's
    capacity overflows under ``jit`` (the values are poisoned with NaN either way).

Example:
  >>> import jscorch as js
  >>> js.config.lowering in ("auto", "kernel", "portable")
  True
"""
from __future__ import annotations

import os

from ._errors import SparseFormatError

LOWERINGS = ("auto", "kernel", "portable")


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
    if value not in LOWERINGS:
      raise SparseFormatError(
          f"jscorch.config.lowering: got {value!r}, expected one of {LOWERINGS}.")
    if value != self._lowering:
      import jax
      jax.clear_caches()
      for hook in _on_change:
        hook()
    self._lowering = value

  def __repr__(self):
    return f"Settings(lowering={self.lowering!r}, checkify_capacity={self.checkify_capacity})"


_on_change: list = []     # callbacks that drop caches keyed on the lowering choice
settings = Settings()
