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

os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
