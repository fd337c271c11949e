"""Compiling, caching and registering generated kernels (primitives/kernel_build.py).

The disk cache is tested with ``$JSCORCH_CACHE_DIR`` pointed at a temporary
directory and a *unique* C source per test (``kernel_build._loaded`` memoizes
libraries per process, and ``dlopen`` of a path already loaded in this process
would not re-read the file — so anything about re-reading runs in a child process
or on a path this process never loaded). The no-compiler fallback and the
deserialized-executable registration run in child processes with their own
environment.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
from jscorch.primitives import c_runtime, einsum_kernel, kernel_build

pytestmark = pytest.mark.skipif(kernel_build.compiler() is None, reason="no C compiler")

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"



@pytest.fixture(autouse=True)
def kernel_lowering():
  """These tests are about generated kernels: lowering "auto" whatever the environment."""
  before = js.config.lowering
  js.config.lowering = "auto"
  yield
  js.config.lowering = before


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """A fresh cache directory in ``$JSCORCH_CACHE_DIR`` (normal, not sanitizer, flags)."""
  root = tmp_path / "cache"
  monkeypatch.setenv("JSCORCH_CACHE_DIR", str(root))
  monkeypatch.delenv("JSCORCH_SANITIZE", raising=False)
  return root / "kernels"


def probe_source(value: int = 7) -> tuple[str, str]:
  """``(source, symbol)``: a C function returning ``value``, unique to this call."""
  symbol = f"jscorch_probe_{uuid.uuid4().hex[:12]}"
  return f"int {symbol}(void) {{ return {value}; }}\n", symbol


def call_int(lib, symbol) -> int:
  fn = getattr(lib, symbol)
  fn.restype = ctypes.c_int
  return fn()


def run_child(script: str, env_updates: dict[str, str | None], timeout=240):
  """Runs ``script`` in a fresh interpreter (tests/ importable); returns the result."""
  env = dict(os.environ)
  env.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(
      [str(TESTS), str(TESTS / "primitives"), env.get("PYTHONPATH", "")])})
  for k, v in env_updates.items():
    if v is None:
      env.pop(k, None)
    else:
      env[k] = v
  return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def so_files(directory: Path) -> list[Path]:
  return sorted(directory.glob("*.so"))


def leftovers(directory: Path) -> list[Path]:
  """Anything in the cache besides published libraries (temp dirs of a compile)."""
  return [p for p in directory.iterdir() if not (p.is_file() and p.suffix == ".so")]


# -- the cache directory and the key ----------------------------------------------------------
def test_cache_dir_reads_the_environment_at_call_time(tmp_path, monkeypatch):
  monkeypatch.setenv("JSCORCH_CACHE_DIR", str(tmp_path / "a"))
  assert kernel_build.cache_dir() == tmp_path / "a" / "kernels"
  assert (tmp_path / "a" / "kernels").is_dir()
  monkeypatch.setenv("JSCORCH_CACHE_DIR", str(tmp_path / "b"))
  assert kernel_build.cache_dir() == tmp_path / "b" / "kernels"
  monkeypatch.delenv("JSCORCH_CACHE_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert kernel_build.cache_dir() == tmp_path / "xdg" / "jscorch" / "kernels"


def test_key_covers_source_flags_compiler_target_and_jax(monkeypatch):
  src, _ = probe_source()
  flags = kernel_build.FLAGS
  key = kernel_build.source_key(src, flags)
  assert key == kernel_build.source_key(src, flags)                     # deterministic
  assert len(key) == 24 and int(key, 16) >= 0
  changed = {
      "source": kernel_build.source_key(src + " ", flags),
      "flags": kernel_build.source_key(src, flags + ("-DX=1",)),
      "sanitize flags": kernel_build.source_key(src, kernel_build.SANITIZE_FLAGS),
  }
  path, version = kernel_build.compiler()
  monkeypatch.setattr(kernel_build, "compiler", lambda: (path, version + " (patched)"))
  changed["compiler version"] = kernel_build.source_key(src, flags)
  monkeypatch.undo()
  monkeypatch.setattr(kernel_build, "_native_target", lambda cc: "-march= other-cpu")
  changed["cpu target"] = kernel_build.source_key(src, flags)
  monkeypatch.undo()
  monkeypatch.setattr(jax, "__version__", jax.__version__ + ".post1")
  changed["jax version"] = kernel_build.source_key(src, flags)
  monkeypatch.undo()
  assert kernel_build.source_key(src, flags) == key
  for what, other in changed.items():
    assert other != key, what
  assert len(set(changed.values())) == len(changed)


def test_sanitize_environment_selects_asan_flags(monkeypatch):
  monkeypatch.delenv("JSCORCH_SANITIZE", raising=False)
  assert kernel_build.active_flags() == kernel_build.FLAGS
  monkeypatch.setenv("JSCORCH_SANITIZE", "1")
  assert kernel_build.active_flags() == kernel_build.SANITIZE_FLAGS
  assert "-fsanitize=address" in kernel_build.SANITIZE_FLAGS
  monkeypatch.setenv("JSCORCH_SANITIZE", "0")
  assert kernel_build.active_flags() == kernel_build.FLAGS


# -- building and the disk cache --------------------------------------------------------------
def test_first_build_publishes_one_library(cache):
  src, symbol = probe_source(7)
  lib = kernel_build.build(src)
  assert call_int(lib, symbol) == 7
  key = kernel_build.source_key(src, kernel_build.FLAGS)
  assert so_files(cache) == [cache / f"jscorch_{key}.so"]
  assert leftovers(cache) == []                   # the temp dir of the compile is gone
  assert kernel_build.build(src) is lib          # memoized in-process


def test_second_process_loads_from_disk_without_compiling(cache):
  src, symbol = probe_source(11)
  assert call_int(kernel_build.build(src), symbol) == 11
  (target,) = so_files(cache)
  before = target.stat()
  script = f"""
    import ctypes
    from jscorch.primitives import kernel_build
    def no_compile(*a, **k):
      raise AssertionError("recompiled a cached kernel")
    kernel_build._compile = no_compile
    lib = kernel_build.build({src!r})
    fn = lib.{symbol}; fn.restype = ctypes.c_int
    print("VALUE", fn())
  """
  res = run_child(script, {"JSCORCH_CACHE_DIR": str(cache.parent), "JSCORCH_SANITIZE": None})
  assert res.returncode == 0, res.stderr
  assert "VALUE 11" in res.stdout
  after = target.stat()
  assert (after.st_mtime_ns, after.st_ino, after.st_size) == \
      (before.st_mtime_ns, before.st_ino, before.st_size)
  assert so_files(cache) == [target] and leftovers(cache) == []


def test_concurrent_processes_publish_one_library(cache):
  """Two processes compiling the same new kernel at once both succeed (write to a temp
  dir, then an atomic ``os.replace``); one library remains, no temporary files."""
  src, symbol = probe_source(13)
  script = f"""
    import ctypes
    from jscorch.primitives import kernel_build
    lib = kernel_build.build({src!r})
    fn = lib.{symbol}; fn.restype = ctypes.c_int
    print("VALUE", fn())
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", JSCORCH_CACHE_DIR=str(cache.parent))
  env.pop("JSCORCH_SANITIZE", None)
  procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  for p in procs:
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0 and "VALUE 13" in out, err
  key = kernel_build.source_key(src, kernel_build.FLAGS)
  assert so_files(cache) == [cache / f"jscorch_{key}.so"] and leftovers(cache) == []


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_cached_library_is_rebuilt(cache, damage):
  src, symbol = probe_source(5)
  key = kernel_build.source_key(src, kernel_build.FLAGS)
  target = cache / f"jscorch_{key}.so"
  cache.mkdir(parents=True, exist_ok=True)
  # A damaged file this process never loaded (a dlopen'ed path would not be re-read).
  target.write_bytes(b"" if damage == "truncate" else b"\x7fELF" + os.urandom(64))
  damaged_size = target.stat().st_size
  lib = kernel_build.build(src)
  assert call_int(lib, symbol) == 5
  assert target.stat().st_size > 1000 != damaged_size
  assert so_files(cache) == [target] and leftovers(cache) == []


def test_corrupted_after_publish_is_rebuilt_by_the_next_process(cache):
  """A library that a crash or a full disk truncated after publishing."""
  src, symbol = probe_source(9)
  script = f"""
    import ctypes
    from jscorch.primitives import kernel_build
    lib = kernel_build.build({src!r})
    fn = lib.{symbol}; fn.restype = ctypes.c_int
    print("VALUE", fn())
  """
  env = {"JSCORCH_CACHE_DIR": str(cache.parent), "JSCORCH_SANITIZE": None}
  # Published by another process: truncating a library this process mapped would crash it
  # (SIGBUS) when the loader touches the mapping again, at exit at the latest.
  assert "VALUE 9" in run_child(script, env).stdout
  (target,) = so_files(cache)
  with open(target, "r+b") as f:
    f.truncate(100)
  res = run_child(script, env)
  assert res.returncode == 0, res.stderr
  assert "VALUE 9" in res.stdout
  assert target.stat().st_size > 1000
  assert so_files(cache) == [target] and leftovers(cache) == []


def test_compile_error_is_reported_and_publishes_nothing(cache):
  with pytest.raises(RuntimeError, match="compiling a generated kernel failed"):
    kernel_build.build("int jscorch_broken(void) { return undeclared_name; }\n"
                       f"/* {uuid.uuid4().hex} */")
  assert so_files(cache) == [] and leftovers(cache) == []


def test_flags_select_a_different_library(cache):
  src, symbol = probe_source(3)
  a = kernel_build.build(src)
  b = kernel_build.build(src, flags=kernel_build.FLAGS + ("-DJSCORCH_TEST_FLAG=1",))
  assert a is not b and call_int(a, symbol) == call_int(b, symbol) == 3
  assert len(so_files(cache)) == 2


# -- registration -----------------------------------------------------------------------------
def ffi_source(symbol: str, offset: float) -> str:
  """A minimal typed-FFI handler on the kernels' C runtime: ``out = 2 * x + offset``."""
  return c_runtime.RUNTIME + textwrap.dedent(f"""
    XLA_FFI_Error* {symbol}(XLA_FFI_CallFrame* cf) {{
      XLA_FFI_Error* early;
      if (jscorch_preamble(cf, &early)) return early;
      const XLA_FFI_Buffer* x = (const XLA_FFI_Buffer*)cf->args.args[0];
      int64_t n = 1;
      for (int64_t d = 0; d < x->rank; ++d) n *= x->dims[d];
      const float* in = (const float*)x->data;
      float* out = (float*)jscorch_ret(cf, 0);
      for (int64_t i = 0; i < n; ++i) out[i] = 2.0f * in[i] + {offset:.1f}f;
      return NULL;
    }}
  """)


def test_register_is_idempotent_and_the_handler_runs(cache, monkeypatch):
  symbol = f"jscorch_test_ffi_{uuid.uuid4().hex[:12]}"
  lib = kernel_build.build(ffi_source(symbol, 1.0))
  calls = []
  real = jax.ffi.register_ffi_target
  monkeypatch.setattr(jax.ffi, "register_ffi_target",
                      lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1])
  assert not kernel_build.is_registered(symbol)
  kernel_build.register(symbol, lib, symbol)
  kernel_build.register(symbol, lib, symbol)
  assert calls == [symbol] and kernel_build.is_registered(symbol)
  # XLA itself accepts the same handler again (what a fresh registry state would do)
  real(symbol, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  x = jnp.arange(6, dtype=jnp.float32).reshape(2, 3)
  call = jax.ffi.ffi_call(symbol, jax.ShapeDtypeStruct(x.shape, x.dtype))
  np.testing.assert_array_equal(np.asarray(jax.jit(call)(x)), 2 * np.asarray(x) + 1)


def test_ensure_registered_twice_same_target():
  A = js.SparseArray.from_buffers(np.array([1.0, 2.0, 0.0], np.float32),
                                  [np.array([0, 1, 2], np.int32), np.array([1, 0, 2], np.int32)],
                                  shape=(2, 2), format="csr")
  X = jnp.ones((2, 3), jnp.float32)
  spec = _einsum_spec(lambda A, X: js.einsum("ij,jk->ik", A, X), A, X)
  kp, reason = einsum_kernel.kernel_plan(spec, list(range(spec.n_inputs)), np.float32)
  assert reason == "kernel"
  name = einsum_kernel.ensure_registered(kp)
  assert name == kp.name and name.startswith("jscorch_k_")
  assert einsum_kernel.ensure_registered(kp) == name and kernel_build.is_registered(name)


def _einsum_spec(fun, *args):
  """The spec of the (one) einsum in ``fun``'s jaxpr — found without lowering."""
  jaxpr = jax.make_jaxpr(fun)(*args)
  (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "jscorch_einsum"]
  return eqn.params["spec"]


SMALL_CSR = """
x = np.zeros((4, 5), np.float32)
x[[0, 1, 1, 3], [2, 0, 4, 4]] = [1.5, -2.0, 0.5, 3.0]
A = js.SparseArray.from_buffers(                       # one padding entry
    np.array([1.5, -2.0, 0.5, 3.0, 0.0], np.float32),
    [np.array([0, 1, 3, 3, 4], np.int32), np.array([2, 0, 4, 4, 5], np.int32)],
    shape=(4, 5), format="csr")
X = np.arange(15, dtype=np.float32).reshape(5, 3) - 7
U = np.arange(12, dtype=np.float32).reshape(4, 3) / 5
"""


def small_csr():
  scope = {"np": np, "js": js}
  exec(SMALL_CSR, scope)
  return scope["x"], scope["A"], scope["X"], scope["U"]


def test_deserialized_executable_needs_and_gets_explicit_registration(tmp_path):
  """An executable restored in a fresh process skips the lowering rule that registers
  its kernel: calling it fails with NOT_FOUND until ``ensure_registered`` is called."""
  from jax.experimental import serialize_executable
  x, A, X, _ = small_csr()
  fun = lambda A, X: js.einsum("ij,jk->ik", A, X)
  lowered = jax.jit(fun).lower(A, X)
  (name,) = set(re.findall(r"@(jscorch_k_[0-9a-f]+)", lowered.as_text()))
  payload = serialize_executable.serialize(lowered.compile())
  blob = tmp_path / "exe.pkl"
  blob.write_bytes(pickle.dumps(payload))
  script = f"""
    import pickle, numpy as np, jax
    import jscorch as js
    from jax.experimental import serialize_executable
    from jscorch.primitives import einsum_kernel
    {textwrap.indent(SMALL_CSR, "    ").strip()}
    payload = pickle.loads(open({str(blob)!r}, "rb").read())
    try:
      serialize_executable.deserialize_and_load(*payload)(A, X)
      print("UNEXPECTED: ran without registration")
    except Exception as e:
      print("BEFORE", type(e).__name__, "NOT_FOUND" in str(e))
    jaxpr = jax.make_jaxpr(lambda A, X: js.einsum("ij,jk->ik", A, X))(A, X)
    (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "jscorch_einsum"]
    spec = eqn.params["spec"]
    kp, reason = einsum_kernel.kernel_plan(spec, list(range(spec.n_inputs)), np.float32)
    print("NAME", einsum_kernel.ensure_registered(kp), reason)
    got = serialize_executable.deserialize_and_load(*payload)(A, X)
    np.testing.assert_allclose(np.asarray(got), x @ X, rtol=1e-6)
    print("AFTER ok", len(einsum_kernel.last_decisions))
  """
  res = run_child(script, {})
  assert res.returncode == 0, res.stdout + res.stderr
  assert "BEFORE JaxRuntimeError True" in res.stdout, res.stdout
  assert f"NAME {name} kernel" in res.stdout, (name, res.stdout)   # stable across processes
  assert "AFTER ok 0" in res.stdout           # the child never ran the lowering rule


# -- no compiler --------------------------------------------------------------------------------
NO_COMPILER_SCRIPT = f"""
  import warnings
  import jax, jax.numpy as jnp, numpy as np
  import jscorch as js
  from jscorch.primitives import einsum_kernel, kernel_build
  assert kernel_build.compiler() is None, kernel_build.compiler()
  {textwrap.indent(SMALL_CSR, "  ").strip()}
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = jax.jit(lambda A, X: js.einsum("ij,jk->ik", A, X))(A, X)
    first = einsum_kernel.last_decisions[-1][1]
    sddmm = jax.jit(lambda A, U, X: js.einsum("ij,ik,jk->ij", A, U, X))(A, U, X)
    second = einsum_kernel.last_decisions[-1][1]
  np.testing.assert_allclose(np.asarray(got), x @ X, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(sddmm.todense()), x * (U @ X.T), rtol=1e-6,
                             atol=1e-6)
  ours = [w for w in caught if issubclass(w.category, js.SparseEfficiencyWarning)
          and "no C compiler" in str(w.message)]
  print("WARNINGS", len(ours))
  print("DECISIONS", first, "|", second)
"""


def test_no_compiler_falls_back_with_one_warning(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "python").symlink_to(sys.executable)
  res = run_child(NO_COMPILER_SCRIPT, {
      "CC": "/nonexistent/cc", "PATH": str(bin_dir),
      "JSCORCH_CACHE_DIR": str(tmp_path / "cache"), "JSCORCH_LOWERING": "auto"})
  assert res.returncode == 0, res.stdout + res.stderr
  assert "WARNINGS 1" in res.stdout, res.stdout
  assert "DECISIONS no compiler | no compiler" in res.stdout, res.stdout
  assert "no compiler" in einsum_kernel.FALLBACKS
  assert not (tmp_path / "cache" / "kernels").exists() or \
      not list((tmp_path / "cache" / "kernels").glob("*.so"))


def test_unusable_cache_directory_does_not_break_einsum(tmp_path, monkeypatch):
  blocker = tmp_path / "not_a_dir"
  blocker.write_text("")
  monkeypatch.setenv("JSCORCH_CACHE_DIR", str(blocker / "cache"))
  monkeypatch.delenv("JSCORCH_SANITIZE", raising=False)
  x, A, X, _ = small_csr()
  X = np.concatenate([X] * 9 + [X[:, :2]], axis=1)         # a width no other test compiles
  with pytest.warns(js.SparseEfficiencyWarning, match="cannot create the kernel cache"):
    got = jax.jit(lambda A, X: js.einsum("ij,jk->ik", A, X))(A, X)
  np.testing.assert_allclose(np.asarray(got), x @ X, rtol=1e-6)


def test_native_target_reads_the_cpu_without_running_the_compiler(monkeypatch, tmp_path):
  """On Linux the CPU part of the key comes from /proc/cpuinfo (no subprocess per
  process); other CPU features give another key, and without the file the compiler
  is asked."""
  info = tmp_path / "cpuinfo"
  info.write_text("processor\t: 0\nvendor_id\t: V\nmodel\t\t: 1\nflags\t\t: fpu avx2\n"
                  "bogomips\t: 1.0\n\nprocessor\t: 1\nflags\t\t: fpu\n")
  expected = "vendor_id\t: V\nmodel\t\t: 1\nflags\t\t: fpu avx2"   # the first block's keys
  assert kernel_build._cpu_identity(str(info)) == expected
  assert kernel_build._cpu_identity(str(tmp_path / "missing")) == ""

  def no_subprocess(*args, **kwargs):
    raise AssertionError("the compiler was run")
  if kernel_build._cpu_identity():
    monkeypatch.setattr(kernel_build.subprocess, "run", no_subprocess)
    assert "flags" in kernel_build._native_target.__wrapped__("cc") or \
        "Features" in kernel_build._native_target.__wrapped__("cc")
    monkeypatch.undo()
  monkeypatch.setattr(kernel_build, "_cpu_identity", lambda: "")
  cc = kernel_build.compiler()
  if cc is not None:
    assert "-march=" in kernel_build._native_target.__wrapped__(cc[0])
