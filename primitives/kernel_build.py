"""Compiling generated C, caching the binaries on disk, registering them with XLA.

* The compiler is ``$CC`` (split like a shell word list, so it may carry flags:
  ``CC="gcc -m64"``), else ``cc``, else ``gcc``, detected once; without one
  :func:`compiler` returns None and the einsum falls back to the portable lowering
  with a single :class:`SparseEfficiencyWarning`.
* Binaries are cached under ``$JSCORCH_CACHE_DIR`` (default
  ``~/.cache/jscorch/kernels``), keyed by sha256 of the source, the flags, the
  compiler command and version, the CPU ``-march=native`` builds for (its /proc/cpuinfo
  identity and flags, else the compiler's resolved target) and the jax version.
  A cached file is published with write-to-temp + ``os.replace`` (safe between
  processes) and rebuilt when it cannot be loaded.
* XLA keeps only function pointers, so every loaded library stays referenced for
  the life of the process; target names carry the source hash, so registering
  the same kernel again is a no-op.

Example:
  >>> lib = build("int jscorch_probe(void) { return 7; }")   # doctest: +SKIP
  >>> lib.jscorch_probe()                                    # doctest: +SKIP
  7
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax

from ._errors import SparseEfficiencyWarning

# -fno-tree-loop-if-convert: GCC 12 at -O3 -march=native with -fassociative-math vectorises
# a guarded reduction over a row's entries wrongly (the float64 diagonal ``ii->i`` of a row
# with 8 entries summed to 0; tests/test_einsum_edge.py). Kernels vectorise their dense loops
# and explicit vector types, which need no if-conversion.
FLAGS = ("-O3", "-march=native", "-std=gnu11", "-fPIC", "-shared", "-ffp-contract=fast",
         "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
         "-fno-tree-loop-if-convert",
         "-Wall", "-Wno-unused-variable", "-Wno-unused-function", "-Werror=implicit")
SANITIZE_FLAGS = ("-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer", "-std=gnu11",
                  "-fPIC", "-shared", "-Werror=implicit")

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}      # hash -> library (kept alive forever)
_registered: set[str] = set()
_warned = [False]


@functools.lru_cache(maxsize=None)
def compiler() -> tuple[str, str] | None:
  """``(command, version line)`` of the C compiler, or None when there is none.

  ``command`` is the compiler's path followed by the flags ``$CC`` carries (shell-quoted;
  :func:`compiler_argv` splits it). Detected once per process (``compiler.cache_clear()``
  after changing ``$CC``); ``python -m jscorch info`` prints it.
  """
  cc = os.environ.get("CC", "")
  try:
    from_env = [shlex.split(cc)] if cc.strip() else []
  except ValueError:        # unbalanced quotes: not a command
    from_env = []
  for argv in (*from_env, ["cc"], ["gcc"]):
    path = shutil.which(argv[0])
    if not path:
      continue
    argv = [path, *argv[1:]]
    try:
      out = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
      continue
    if out.returncode == 0:
      lines = (out.stdout or out.stderr).strip().splitlines()
      return shlex.join(argv), lines[0] if lines else argv[0]
  return None


def compiler_argv(command: str) -> list[str]:
  """The argument list of a :func:`compiler` command (path, then ``$CC``'s flags)."""
  return shlex.split(command)


def warn_no_compiler() -> None:
  """Warns once per process that kernels are unavailable."""
  if not _warned[0]:
    _warned[0] = True
    warnings.warn("jscorch: no C compiler found ($CC, cc, gcc); generated kernels are "
                  "disabled and the portable lowering is used. Install gcc or set $CC.",
                  SparseEfficiencyWarning, stacklevel=3)


#: The lines of /proc/cpuinfo that fix what ``-march=native`` resolves to (x86 and Arm).
_CPU_KEYS = ("vendor_id", "cpu family", "model", "model name", "flags", "CPU implementer",
             "CPU architecture", "CPU variant", "CPU part", "Features")


def _cpu_identity(path: str = "/proc/cpuinfo") -> str:
  """The first processor's identity and feature flags in ``path``, or "" without it."""
  try:
    with open(path) as f:
      block = f.read().split("\n\n", 1)[0]
  except OSError:
    return ""
  return "\n".join(line for line in block.splitlines()
                   if line.split(":", 1)[0].strip() in _CPU_KEYS)


@functools.lru_cache(maxsize=None)
def _native_target(cc: str) -> str:
  """What ``-march=native`` depends on besides the compiler (whose version is in the key
  too): the CPU's identity and features from /proc/cpuinfo, or where there is none the
  compiler's resolved target options (a subprocess: about 10 ms per process)."""
  cpu = _cpu_identity()
  if cpu:
    return cpu
  try:
    out = subprocess.run([*compiler_argv(cc), "-march=native", "-Q", "--help=target"],
                         capture_output=True, text=True, timeout=30)
    return out.stdout
  except (OSError, subprocess.SubprocessError):
    return ""


_process_dir: list[Path] = []


def cache_root() -> Path:
  """jscorch's cache directory: ``$JSCORCH_CACHE_DIR``, else ``~/.cache/jscorch`` (or under
  ``$XDG_CACHE_HOME``). Kernels are cached in its ``kernels`` folder."""
  return Path(os.environ.get("JSCORCH_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jscorch"))


def cache_dir() -> Path:
  """The kernel cache directory; a per-process temporary one if it cannot be created."""
  path = cache_root() / "kernels"
  try:
    path.mkdir(parents=True, exist_ok=True)
    return path
  except OSError:
    if not _process_dir:
      _process_dir.append(Path(tempfile.mkdtemp(prefix="jscorch-kernels-")))
      warnings.warn(f"jscorch: cannot create the kernel cache {path}; kernels are cached in "
                    f"{_process_dir[0]} for this process only. Set $JSCORCH_CACHE_DIR.",
                    SparseEfficiencyWarning, stacklevel=2)
    return _process_dir[0]


def source_key(source: str, flags) -> str:
  """The cache key of a kernel: everything that affects the binary."""
  cc = compiler()
  parts = [source, " ".join(flags), *(cc or ("", "")), _native_target(cc[0]) if cc else "",
           jax.__version__]
  return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def active_flags() -> tuple[str, ...]:
  """Compiler flags in force: ``$JSCORCH_SANITIZE=1`` builds with AddressSanitizer
  (the process must then preload libasan; see tests/primitives/test_sanitizer.py)."""
  return SANITIZE_FLAGS if os.environ.get("JSCORCH_SANITIZE") == "1" else FLAGS


def build(source: str, flags=None) -> ctypes.CDLL:
  """Compiles (or loads from cache) ``source`` into a shared library."""
  flags = active_flags() if flags is None else flags
  key = source_key(source, flags)
  with _lock:
    if key in _loaded:
      return _loaded[key]
    cc = compiler()
    if cc is None:
      raise RuntimeError("jscorch: no C compiler available")
    target = cache_dir() / f"jscorch_{key}.so"
    lib = None
    if target.exists():
      try:
        lib = ctypes.CDLL(str(target))
      except OSError:
        lib = None          # corrupt or truncated: rebuild below
    if lib is None:
      _compile(cc[0], source, flags, target)
      lib = ctypes.CDLL(str(target))
    _loaded[key] = lib
    return lib


def _compile(cc: str, source: str, flags, target: Path) -> None:
  include = jax.ffi.include_dir()
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    src = Path(tmp) / "kernel.c"
    src.write_text(source)
    out = Path(tmp) / "kernel.so"
    cmd = [*compiler_argv(cc), *flags, f"-I{include}", str(src), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
      raise RuntimeError(f"jscorch: compiling a generated kernel failed:\n{res.stderr[:4000]}")
    os.replace(out, target)


def register(name: str, lib: ctypes.CDLL, symbol: str) -> None:
  """Registers ``lib.symbol`` as the XLA FFI target ``name`` on CPU (idempotent)."""
  with _lock:
    if name in _registered:
      return
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    _registered.add(name)


def is_registered(name: str) -> bool:
  return name in _registered


def ensure_registered(name: str, source) -> str:
  """Builds (or loads from the cache) and registers the kernel exported as ``name`` unless
  it is registered already; returns ``name``. ``source``: its C text, or a function
  returning it (called only when the kernel is not registered yet)."""
  if not is_registered(name):
    register(name, build(source() if callable(source) else source), name)
  return name
