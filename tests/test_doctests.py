"""Every docstring example of the public modules runs and prints what it shows."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import jscorch
import jscorch.primitives

SKIP = (".bench", "__main__")     # the benchmark's examples time real workloads


def _modules() -> list[str]:
  names = []
  for package in (jscorch, jscorch.primitives):
    names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
              if not any(s in m.name for s in SKIP)]
  return sorted(set(names) | {"jscorch", "jscorch.primitives"})


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  report = []
  for test in doctest.DocTestFinder().find(module, name):
    runner.run(test, out=report.append)
  assert runner.failures == 0, "".join(report)
