"""The C backend: generated C behind the typed XLA FFI, for the CPU.

It wraps the entry points of :mod:`jscorch.primitives.einsum_kernel` (the planner's
``kernel_plan``, ``ensure_registered`` which prints, compiles, caches and registers a
kernel) and lowers a planned kernel to one ``custom_call`` of that kernel.

Example:
  >>> from jscorch.primitives import backends
  >>> backends.get("c").platforms, backends.get("kernel") is backends.get("c")
  (('cpu',), True)
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from ... import einsum_kernel, kernel_build

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class CBackend:
  """Generated C kernels (float32 / float64 values) on the CPU; needs a C compiler."""
  name = "c"
  platforms = ("cpu",)

  def available(self) -> str | None:
    if kernel_build.compiler() is None:
      kernel_build.warn_no_compiler()
      return "no compiler"
    return None

  def supports(self, plan: Any, dtype, platform: str) -> str | None:
    return None if np.dtype(dtype) in DTYPES else "dtype"

  def lower(self, ctx, plan: Any, *args, platform: str):
    # sizes the buffers do not carry travel as FFI attributes (SpGEMM's column count)
    attributes = plan.ffi_attributes() if hasattr(plan, "ffi_attributes") else {}
    name = einsum_kernel.ensure_registered(plan)
    return jax.ffi.ffi_lowering(name)(ctx, *args, **attributes)

  def __repr__(self):
    return "CBackend()"


from .. import register_backend  # noqa: E402  (the registry holds one instance)

register_backend(CBackend())
