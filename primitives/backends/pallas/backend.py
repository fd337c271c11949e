"""The Pallas backend: the engine's loop-nest IR as Pallas kernels, for GPUs and TPUs.

It lowers the same planned :class:`~jscorch.primitives.loopnest.Kernel` the C backend
prints (from :func:`jscorch.primitives.einsum_kernel.kernel_plan`): :mod:`.printer`
traces it into a kernel body, :mod:`.launch` wraps it in one ``pallas_call`` whose grid
is the outer parallel loop, balanced by stored entries. On ``"cuda"`` / ``"rocm"`` it is
a Triton kernel, on ``"tpu"`` a Mosaic kernel with the index buffers scalar-prefetched.
On the CPU it runs in Pallas' interpreter, only when chosen by name
(``jscorch.config.lowering = "pallas"``; under ``"auto"`` the C backend serves the CPU):
that is how it is tested without an accelerator. A product over a block-sparse operand's
blocks (BSR: SpMM, ``Aᵀ G``, the SDDMM at its blocks) runs as tile matmuls instead
(:mod:`.blocks`; :data:`last_forms` records which form each lowering took).

Kernels with no Pallas form fall back to the portable lowering with a reason from
:data:`FALLBACKS` (or ``"dtype"``, a key of ``einsum_kernel.FALLBACKS``).

Example:
  >>> from jscorch.primitives import backends
  >>> pallas = backends.get("pallas")
  >>> pallas.platforms, pallas.explicit_platforms
  (('cuda', 'rocm', 'tpu'), ('cpu',))
"""
from __future__ import annotations

import collections
import functools
from typing import Any

import numpy as np
from jax.interpreters import mlir

from ... import loopnest as ir
from . import blocks, printer

#: Plans the Pallas backend leaves to the portable lowering, by reason (besides "dtype").
FALLBACKS = {
    "pallas: sparse output": "a new sparse pattern (the SpGEMM plan): no Pallas kernel yet",
    "pallas: serial": "an outer loop whose units are not owners of their outputs "
                      "(``Parallel.NONE``): the grid's programs would race",
    "pallas: loop": "a loop other than dense levels, compressed segments and free indices: "
                    "co-iteration (``Intersect``, ``TupleIntersect``), singleton levels, "
                    "joins (``Locate``), repeated indices (``SkipUnless``)",
    "pallas: index size": "an output, capacity or unit count of 2^31 or more (the kernels "
                          "index with int32; a dense operand that large is not detected)",
    "pallas: lanes": "a buffer read by rows along two indices of different sizes, or (on a "
                     "TPU) a buffer read by rows also read one element at a time",
}

#: The kernel form the CPU interpreter runs: ``"gpu"`` (plain refs) or ``"tpu"`` (index
#: buffers scalar-prefetched, SMEM and VMEM refs): tests run both without an accelerator.
INTERPRET_FLAVOR = "gpu"

#: The kernel form of each recent Pallas lowering, ``(einsum, "blocked" | "elements")``,
#: newest last: ``"blocked"`` is :mod:`.blocks` (tile matmuls over a block-sparse
#: operand's blocks), ``"elements"`` the printed loop nest.
last_forms: collections.deque = collections.deque(maxlen=64)

#: Value dtypes per platform: Triton and the interpreter take float64, bfloat16 and float16
#: (accumulated in float32); a TPU's kernels read scalars from SMEM, 32-bit only.
DTYPES = {"tpu": (np.dtype(np.float32),)}
_DEFAULT_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, "bfloat16", np.float16))


class PallasBackend:
  """Pallas kernels (Triton on GPUs, Mosaic on TPUs, the interpreter on the CPU)."""
  name = "pallas"
  platforms = ("cuda", "rocm", "tpu")
  explicit_platforms = ("cpu",)       # the interpreter: only when chosen by name
  parallel_only = True                # the grid's programs must own their outputs

  def available(self) -> str | None:
    return None

  def supports(self, plan: Any, dtype, platform: str) -> str | None:
    if np.dtype(dtype) not in DTYPES.get(platform, _DEFAULT_DTYPES):
      return "dtype"
    if getattr(plan, "stage", None) is not None:    # (its grid transposes, in XLA)
      return "pallas: staged tiles"
    reason = printer.check(plan, scalar_loads=platform != "tpu")
    if reason not in (None, "pallas: index size") and self.blocked(plan, dtype, platform):
      return None
    return reason

  @staticmethod
  def blocked(plan: Any, dtype, platform: str) -> blocks.Form | None:
    """The blocked form of ``plan`` (:func:`blocks.form`) where it runs on ``platform``."""
    return blocks.form(plan) if blocks.dtypes_ok(dtype, platform) else None

  def lower(self, ctx, plan: ir.Kernel, *args, platform: str):
    from . import launch  # (imports jax.experimental.pallas: only when used)
    flavor = "tpu" if platform == "tpu" else INTERPRET_FLAVOR if platform == "cpu" else "gpu"
    shape = ctx.avals_out[0].shape
    f = self.blocked(plan, ctx.avals_out[0].dtype, platform)
    einsum = dict(plan.notes).get("einsum")
    last_forms.append((einsum, "blocked" if f is not None else "elements"))
    if f is not None:
      fun = functools.partial(blocks.run, plan, f, shape, flavor=flavor,
                              interpret=platform == "cpu")
    else:
      fun = functools.partial(launch.run, plan, shape, flavor=flavor,
                              interpret=platform == "cpu")
    return mlir.lower_fun(lambda *flat: [fun(*flat)], multiple_results=True)(ctx, *args)

  def __repr__(self):
    return "PallasBackend()"


from .. import register_backend  # noqa: E402  (the registry holds one instance)

register_backend(PallasBackend())
