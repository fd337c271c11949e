"""Test configuration shared by the whole suite.

* JAX runs on the CPU (``JAX_PLATFORMS=cpu``) with its default 32-bit mode; tests
  that need 64-bit values enable it locally with ``util.dtype_context``.
* Hypothesis uses a deterministic profile without deadlines (JAX compiles on first
  use, so wall-clock deadlines would be flaky) and few examples, so the suite
  stays fast on two cores.
* ``tests/`` is put on ``sys.path`` so every test module, at any depth, imports the
  shared helpers with ``import util``.
"""
import os
import sys
import zlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JSCORCH_BENCH_MIN_TIME_S", "0")   # bench tests check results, not times

# The suite compiles a few thousand small XLA programs per worker, and XLA's CPU
# optimization passes and fusion emitters are most of that time (about 70 of 90 ms per
# program): without them a test module runs in about 60 % of the time. They change how
# fast a program runs, not what it computes, and the tests check values, so the suite
# turns them off (in this process and, through the environment, in the processes it
# starts). JSCORCH_TEST_XLA_DEFAULTS=1 runs it with XLA's default compiler settings.
_FAST_COMPILE_XLA_FLAGS = ("--xla_backend_optimization_level=0",
                           "--xla_cpu_use_fusion_emitters=false")
if os.environ.get("JSCORCH_TEST_XLA_DEFAULTS") != "1":
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                      *_FAST_COMPILE_XLA_FLAGS]).strip()

import hypothesis  # noqa: E402

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
  sys.path.insert(0, _TESTS_DIR)

hypothesis.settings.register_profile(
    "jscorch",
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile(os.environ.get("JSCORCH_HYPOTHESIS_PROFILE", "jscorch"))


# -- both lowerings -----------------------------------------------------------------------
# Modules whose tests run twice: with generated kernels (lowering "auto") and with the
# portable lowering, so every test of the portable path also runs on the kernel path.
import pytest  # noqa: E402

BOTH_LOWERINGS = {"test_einsum.py", "test_ops.py", "test_einsum_rules.py", "test_einsum_edge.py"}


@pytest.fixture(scope="module")
def lowering(request):
  """Sets ``jscorch.config.lowering`` for a whole module (parametrized below)."""
  import jscorch as js
  previous = js.config.lowering
  js.config.lowering = request.param
  yield request.param
  js.config.lowering = previous


@pytest.fixture(autouse=True)
def _module_lowering(request):
  """Activates ``lowering`` for the tests of :data:`BOTH_LOWERINGS` that do not name it
  (adding it to ``fixturenames`` at collection parametrizes them but sets nothing up)."""
  if os.path.basename(str(request.node.fspath)) in BOTH_LOWERINGS:
    request.getfixturevalue("lowering")


def pytest_generate_tests(metafunc):
  if os.path.basename(str(metafunc.definition.fspath)) in BOTH_LOWERINGS:
    if "lowering" not in metafunc.fixturenames:
      metafunc.fixturenames.append("lowering")
    # The portable repeat is `slow`: the quick run (-m "not slow") covers the kernel path.
    metafunc.parametrize("lowering", ["auto", pytest.param("portable", marks=pytest.mark.slow)],
                         indirect=True, scope="module", ids=["kernel", "portable"])


# The portable repeat runs a fixed eighth of those tests (chosen by a hash of the test's
# name, so the same eighth every run): the portable lowering is also tested on its own
# (tests/primitives, and each new case in both lowerings), and the whole repeat would cost
# about five minutes of the 30-minute CI budget. JSCORCH_FULL_PORTABLE=1 runs all of it.
def _sampled_out(item) -> bool:
  """Whether ``item`` is a portable-lowering repeat outside the sampled eighth."""
  callspec = getattr(item, "callspec", None)
  return (os.path.basename(str(item.fspath)) in BOTH_LOWERINGS and callspec is not None
          and callspec.params.get("lowering") == "portable"
          and zlib.crc32(item.nodeid.encode()) % 8 != 0)


def pytest_collection_modifyitems(config, items):
  if os.environ.get("JSCORCH_FULL_PORTABLE") == "1":
    return
  dropped = [item for item in items if _sampled_out(item)]
  if dropped:
    config.hook.pytest_deselected(items=dropped)
    items[:] = [item for item in items if not _sampled_out(item)]


# -- quiet end of an xdist run -------------------------------------------------------------
# When the run is over, execnet gives each pytest-xdist worker 5 s to finish and then sends
# it SIGINT. A worker's last full garbage collection (pytest's unraisable-exception check)
# runs JAX's gc callback over the whole heap and can take longer on a loaded machine; the
# KeyboardInterrupt then lands in that callback and is printed as an "Exception ignored in
# _xla_gc_callback" traceback after a green run. The results are already sent, so a
# worker ignores SIGINT from then on and finishes its cleanup.
@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
  if hasattr(session.config, "workerinput"):       # an xdist worker, not the controller
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
