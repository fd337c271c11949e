"""Backends: who turns a planned einsum into native code, per platform.

A :class:`Backend` takes the engine's planned kernel (today the loop-nest IR of
:func:`jscorch.primitives.einsum_kernel.kernel_plan`, or its SpGEMM plan) and either
says why it cannot (a key of ``einsum_kernel.FALLBACKS`` or of the backend's own
``FALLBACKS`` table) or emits the MLIR for it.
The einsum primitive registers one lowering rule per platform; that rule asks the
backends registered for the platform, in registration order, and otherwise runs the
portable lowering, which stays the reference (it needs no backend at all).

``jscorch.config.lowering`` picks: ``"auto"`` (the first backend that supports the
kernel), ``"portable"``, or a backend's :attr:`Backend.name` (only that one;
``"kernel"`` is kept as an alias of ``"c"``).

Nothing here assumes C: a backend is a name, the platforms it serves (and, optionally,
``explicit_platforms`` it serves only when chosen by name: the Pallas interpreter on the
CPU), whether it is usable on this machine, which kernels it supports on a platform and
how it lowers one.

Example:
  >>> class Echo:
  ...   name, platforms = "echo", ("cpu",)
  ...   def available(self): return "no compiler"
  ...   def supports(self, plan, dtype, platform): return None
  ...   def lower(self, ctx, plan, *args, platform): raise NotImplementedError
  >>> isinstance(Echo(), Backend)
  True
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

ALIASES = {"kernel": "c"}      # the name before backends had names


@runtime_checkable
class Backend(Protocol):
  """A native lowering of planned einsum kernels.

  Attributes:
    name: the name ``jscorch.config.lowering`` selects it by (``"c"``, ``"pallas"``).
    platforms: the JAX platforms it lowers for (``("cpu",)``, ``("cuda", "rocm")``).
    explicit_platforms: (optional) platforms it lowers for only when
      ``config.lowering`` names it, never under ``"auto"``.
    parallel_only: (optional, default False) whether every kernel's outer loop must
      have owners: the planner then re-sorts a driver whenever that makes them
      owners, where otherwise it may keep a serial loop that accumulates into the
      output (``plan.transpose_pays``).
  """
  name: str
  platforms: tuple[str, ...]

  def available(self) -> str | None:
    """None when usable on this machine, else a fallback reason (``"no compiler"``)."""

  def supports(self, plan: Any, dtype, platform: str) -> str | None:
    """None when it can lower ``plan`` with values of ``dtype`` for ``platform``, else a
    fallback reason."""

  def lower(self, ctx, plan: Any, *args, platform: str):
    """The MLIR results of ``plan`` applied to the flat inputs ``args`` for ``platform``
    (a lowering rule; a multi-platform lowering calls it once per platform)."""


_registry: dict[str, Backend] = {}
_on_register: list = []     # callbacks(backend): primitives add lowering rules for new platforms


def register_backend(backend: Backend) -> Backend:
  """Registers ``backend`` (replacing one of the same name); returns it.

  Raises:
    TypeError: ``backend`` does not have the :class:`Backend` methods.
  """
  if not isinstance(backend, Backend) or not isinstance(backend.name, str) or \
      not backend.platforms:
    raise TypeError(f"register_backend: got {backend!r}, expected a Backend (name, platforms, "
                    "available, supports, lower). Define those attributes and methods.")
  if backend.name in ("auto", "portable") or backend.name in ALIASES:
    raise ValueError(f"register_backend: got name={backend.name!r}, expected a name other "
                     f"than 'auto', 'portable' and {sorted(ALIASES)}. Rename the backend.")
  new = [p for p in (*backend.platforms, *_explicit(backend)) if p not in platforms()]
  _registry[backend.name] = backend
  for hook in _on_register:
    hook(new)
  return backend


def unregister_backend(name: str) -> None:
  """Removes the backend called ``name`` (its platforms' rules then find no backend)."""
  _registry.pop(name, None)


def names() -> tuple[str, ...]:
  """The registered backends' names, in registration order."""
  return tuple(_registry)


def get(name: str) -> Backend:
  """The backend called ``name`` (or by an alias such as ``"kernel"``)."""
  return _registry[ALIASES.get(name, name)]


def for_platform(platform: str, choice: str = "auto") -> tuple[Backend, ...]:
  """The backends a lowering rule for ``platform`` asks under ``config.lowering = choice``:
  all registered for the platform (``"auto"``), none (``"portable"``), or the one named
  (also for one of its ``explicit_platforms``)."""
  if choice == "portable":
    return ()
  choice = ALIASES.get(choice, choice)
  return tuple(b for b in _registry.values()
               if platform in b.platforms and choice in ("auto", b.name) or
               platform in _explicit(b) and choice == b.name)


def platforms() -> tuple[str, ...]:
  """Every platform some registered backend lowers for (when chosen by name included)."""
  return tuple(dict.fromkeys(p for b in _registry.values() for p in (*b.platforms,
                                                                     *_explicit(b))))


def _explicit(backend: Backend) -> tuple[str, ...]:
  return tuple(getattr(backend, "explicit_platforms", ()))
