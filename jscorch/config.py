"""``jscorch.config``: process-wide settings (see :mod:`jscorch.primitives.settings`), and
:func:`enable_compilation_cache`."""
from __future__ import annotations

import os
from pathlib import Path

from jscorch.primitives.settings import LOWERINGS as LOWERINGS
from jscorch.primitives.settings import settings as config

__all__ = ["config", "LOWERINGS", "enable_compilation_cache"]


def enable_compilation_cache(path: str | os.PathLike | None = None, *,
                             min_compile_time_s: float = 0.0) -> Path:
  """Turns on JAX's persistent compilation cache for this process.

  Compiled XLA programs (jscorch's and every other jitted function of the process) are
  stored under ``path``, so a new process that runs the same function on the same shapes
  loads the program instead of compiling it. jscorch's generated kernels are cached on
  disk anyway; with this, a fresh process also skips XLA's compilation of the program
  around them (a 2-layer GCN's first result on a 131k-node graph: about 1.2 s without,
  0.5 s with, on 2 CPU cores). JAX caches only programs that took at least 1 s to
  compile by default; sparse models are many smaller programs, so the threshold is
  lowered to ``min_compile_time_s``. Call it once, early (later calls move the cache).

  The cache is trusted code: keep it in a directory only you can write to (JAX's advice).

  Args:
    path: the cache directory; default ``xla`` in jscorch's cache
      (``$JSCORCH_CACHE_DIR``, else ``~/.cache/jscorch``).
    min_compile_time_s: cache programs that took at least this long to compile.

  Returns:
    The cache directory.

  Example:
    >>> import jscorch as js
    >>> path = js.enable_compilation_cache()       # doctest: +SKIP
  """
  import jax
  from jax.experimental.compilation_cache import compilation_cache

  from jscorch.primitives import kernel_build
  path = Path(path) if path is not None else kernel_build.cache_root() / "xla"
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
  compilation_cache.reset_cache()       # takes effect after earlier compilations too
  return path
