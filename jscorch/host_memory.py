"""The host allocator: keep freed buffers for the next call instead of returning them.

XLA's CPU runtime allocates each call's intermediates with ``malloc``. glibc serves a
block over 32 MiB (64 MiB on a worker thread's arena) with a fresh ``mmap`` and unmaps it
when freed, so every call of a model whose activations are that large touches its
buffers' pages for the first time again: one page fault per 4 KiB, about 22 ms per 64 MiB
on a 2-core machine. A 2-layer GCN on a 131k-node graph (hidden width 64) spends a third
of its inference there: 16,384 faults a call. :func:`retain_host_memory` makes glibc
serve such blocks from its heap and keep freed memory for reuse (one arena for every
thread, no ``mmap`` for large blocks, freed memory kept), so the second call reuses the
first call's pages; :func:`release_host_memory` hands the free memory back on request.

It is process-wide, so it is opt-in (``$JSCORCH_RETAIN_HOST_MEMORY=1`` turns it on when
jscorch is imported); ``python -m jscorch demo`` and ``bench`` turn it on. A thread keeps
the arena it first allocated from, so it must run before the first JAX computation. Only
glibc (Linux) is tuned; with another C library both functions do nothing and return False.

Example:
  >>> import jscorch as js
  >>> js.retain_host_memory()          # doctest: +SKIP
  True
"""
from __future__ import annotations

import ctypes
import os
import sys
import warnings

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_retained = False


def _glibc():
  """The process's C library if it is glibc, else None."""
  if not sys.platform.startswith("linux"):
    return None
  libc = ctypes.CDLL(None)
  if not all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
    return None
  return libc


def _jax_has_run() -> bool:
  """Whether a JAX backend (and so its worker threads) exists in this process."""
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge
  return xla_bridge.backends_are_initialized()


def retain_host_memory(limit_bytes: int | None = None) -> bool:
  """Keeps freed host buffers for reuse, process-wide (glibc; see the module docstring).

  Call it once, before the first JAX computation: threads that have already allocated keep
  their own arenas, whose blocks over 64 MiB are still unmapped when freed (a warning
  says so). The resident set then stays at its peak until :func:`release_host_memory`.

  Args:
    limit_bytes: free memory the heap may keep before it returns the excess to the
      system, below ``2**31``; None (the default) keeps all of it. A limit below a call's
      intermediates brings the faults back: a 2-layer GCN's training epoch on a 1M-node
      graph frees about 2 GiB a call.

  Returns:
    Whether the allocator was tuned (False without glibc).

  Raises:
    ValueError: ``limit_bytes`` is negative or does not fit a C ``int``.
  """
  global _retained
  if limit_bytes is not None and not 0 <= limit_bytes < 2**31:
    raise ValueError(f"retain_host_memory: limit_bytes must be None or in [0, 2**31); got "
                     f"{limit_bytes}")
  libc = _glibc()
  if libc is None:
    return False
  if _jax_has_run() and not _retained:
    warnings.warn("retain_host_memory: JAX has already run a computation, so its threads "
                  "keep their allocator arenas and still unmap buffers over 64 MiB after "
                  "each call; call it before the first JAX computation (or set "
                  "JSCORCH_RETAIN_HOST_MEMORY=1 before importing jscorch)", stacklevel=2)
  done = (libc.mallopt(_M_ARENA_MAX, 1) and libc.mallopt(_M_MMAP_MAX, 0)
          and libc.mallopt(_M_TRIM_THRESHOLD, -1 if limit_bytes is None else limit_bytes))
  _retained = _retained or bool(done)
  return bool(done)


def release_host_memory() -> bool:
  """Returns the heap's free memory to the system now (``malloc_trim``); True if any was.

  The resident set then counts live buffers only (the bench calls it before measuring a
  contender's peak memory)."""
  libc = _glibc()
  return bool(libc is not None and libc.malloc_trim(0))


def host_memory_retained() -> bool:
  """Whether :func:`retain_host_memory` has tuned the allocator in this process."""
  return _retained


if os.environ.get("JSCORCH_RETAIN_HOST_MEMORY") == "1":
  retain_host_memory()
