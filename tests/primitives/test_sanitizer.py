"""Generated kernels never read or write out of bounds: the kernel matrix under AddressSanitizer.

A child process runs ``_sanitizer_matrix.py`` with ``JSCORCH_SANITIZE=1`` (every
kernel compiled with ``-fsanitize=address``), a fresh ``JSCORCH_CACHE_DIR`` and
libasan preloaded. The Python interpreter is not linked against libstdc++, so
libasan's ``__cxa_throw`` interceptor finds no real function and aborts at the first
C++ exception inside jaxlib ("CHECK failed: asan_interceptors.cpp ...
real___cxa_throw"); preloading libstdc++ right after libasan resolves it
(``verify_asan_link_order=0`` alone does not).

A negative control first checks that the harness does catch an overflow, so the
matrix passing means something.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _gcc_file(name: str) -> Path | None:
  try:
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True,
                         timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  # gcc echoes the bare name back when it does not know the file
  return Path(out) if out and os.path.isabs(out) and Path(out).exists() else None


LIBASAN = _gcc_file("libasan.so")
LIBSTDCXX = _gcc_file("libstdc++.so.6")

pytestmark = pytest.mark.skipif(
    LIBASAN is None or LIBSTDCXX is None,
    reason="AddressSanitizer runtime not found: `gcc -print-file-name=libasan.so` (and "
           "libstdc++.so.6) must resolve to existing files")


def asan_env(cache: Path) -> dict[str, str]:
  env = dict(os.environ)
  env.update({
      "JSCORCH_SANITIZE": "1",
      "JSCORCH_CACHE_DIR": str(cache),
      "JSCORCH_LOWERING": "auto",
      "JAX_PLATFORMS": "cpu",
      "LD_PRELOAD": f"{LIBASAN} {LIBSTDCXX}",
      "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
      "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE), env.get("PYTHONPATH", "")]),
  })
  return env


def test_harness_catches_an_overflow(tmp_path):
  """Control: a sanitized build that writes one element past a buffer is reported."""
  script = textwrap.dedent("""
    import ctypes
    from jscorch.primitives import kernel_build
    assert "-fsanitize=address" in kernel_build.active_flags()
    lib = kernel_build.build('''
      #include <stdlib.h>
      int jscorch_overflow(int n) {
        int* p = (int*)malloc(sizeof(int) * n);
        for (int i = 0; i <= n; ++i) p[i] = i;      /* one past the end */
        int s = p[0];
        free(p);
        return s;
      }''')
    lib.jscorch_overflow(8)
    print("NOT CAUGHT")
  """)
  res = subprocess.run([sys.executable, "-c", script], env=asan_env(tmp_path / "cache"),
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert res.returncode != 0 and "NOT CAUGHT" not in res.stdout, res.stdout + res.stderr
  assert "AddressSanitizer: heap-buffer-overflow" in res.stderr, res.stderr[-3000:]
  assert "jscorch_overflow" in res.stderr


def test_structure_kernels_under_address_sanitizer(tmp_path):
  """The structure kernels alone (conversions, coalescing; a few seconds)."""
  cache = tmp_path / "cache"
  res = subprocess.run([sys.executable, str(HERE / "_sanitizer_matrix.py"), "structure"],
                       env=asan_env(cache), cwd=REPO, capture_output=True, text=True,
                       timeout=900)
  report = res.stderr[-6000:]
  assert "AddressSanitizer" not in res.stderr, report
  assert res.returncode == 0, res.stdout[-2000:] + report
  assert "MATRIX OK" in res.stdout
  assert int(res.stdout.split("MATRIX OK")[1].split()[0]) >= 10
  libraries = sorted((cache / "kernels").glob("*.so"))
  assert libraries and all(b"__asan_report" in lib.read_bytes() for lib in libraries)


@pytest.mark.slow
def test_kernel_matrix_under_address_sanitizer(tmp_path):
  cache = tmp_path / "cache"
  res = subprocess.run([sys.executable, str(HERE / "_sanitizer_matrix.py")],
                       env=asan_env(cache), cwd=REPO, capture_output=True, text=True,
                       timeout=900)
  report = res.stderr[-6000:]
  assert "AddressSanitizer" not in res.stderr, report
  assert res.returncode == 0, res.stdout[-2000:] + report
  assert "MATRIX OK" in res.stdout
  lowered = int(res.stdout.split("MATRIX OK")[1].split()[0])
  libraries = sorted((cache / "kernels").glob("*.so"))
  assert lowered >= 40 and len(libraries) >= 40, (lowered, len(libraries))
  # every kernel that ran was really instrumented
  for lib in libraries:
    assert b"__asan_report" in lib.read_bytes(), lib


def test_union_kernels_under_address_sanitizer(tmp_path):
  """The union kernels alone (A + B, maximum, concatenate; _sanitizer_matrix.union_matrix)."""
  cache = tmp_path / "cache"
  script = "import _sanitizer_matrix as m; m.union_matrix(); print('UNION OK', m.kernels)"
  res = subprocess.run([sys.executable, "-c", script], env=asan_env(cache), cwd=REPO,
                       capture_output=True, text=True, timeout=900)
  report = res.stderr[-6000:]
  assert "AddressSanitizer" not in res.stderr, report
  assert res.returncode == 0, res.stdout[-2000:] + report
  assert int(res.stdout.split("UNION OK")[1].split()[0]) >= 9
  libraries = sorted((cache / "kernels").glob("*.so"))
  assert libraries and all(b"__asan_report" in lib.read_bytes() for lib in libraries)
