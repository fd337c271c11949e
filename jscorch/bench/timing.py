"""Timing and memory measurement: median of repeats after a warm-up, peak RSS growth."""
from __future__ import annotations

import dataclasses
import os
import threading
import time

import jax
import numpy as np

from jscorch import host_memory


@dataclasses.dataclass
class Measurement:
  median_ms: float
  compile_s: float
  first_s: float
  peak_mb: float
  result: object


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRss:
  """Samples the resident set size in a thread; ``peak`` is the growth over the start."""

  def __init__(self):
    self.base = self.peak = 0
    self._stop = threading.Event()

  def __enter__(self):
    self.base = self.peak = _rss_bytes()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, _rss_bytes())
      time.sleep(0.0005)

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _rss_bytes())


def _ready(x):
  jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready")
                         else a, x)
  return x


#: Short calls repeat until this much time is spent (at least ``repeats`` times), so the
#: median of a call of tens of microseconds is not the median of three
#: (``$JSCORCH_BENCH_MIN_TIME_S``; the test suite sets 0: it checks results, not times).
MIN_TIMED_S = float(os.environ.get("JSCORCH_BENCH_MIN_TIME_S", "0.2"))
MAX_REPEATS = 2000


def measure(fn, repeats: int) -> Measurement:
  """Times ``fn()``: the first call (compile + run: ``first_s``, and ``compile_s`` its
  excess over a repeated call) and the median of ``repeats`` or more calls (as many as
  fit in :data:`MIN_TIMED_S`, up to :data:`MAX_REPEATS`).

  ``peak_mb`` is the largest resident-set growth while the first call or a second one
  (the first's result released) runs. The sampling thread stops before the timed calls:
  it wakes every half millisecond, which on two cores delays multi-threaded contenders
  (torch's OpenMP team waits for its preempted thread). The heap's free memory goes back
  to the system first (:func:`jscorch.release_host_memory`), so the growth is this
  contender's even when freed buffers are retained. ``result`` is the last call's.
  """
  host_memory.release_host_memory()
  with _PeakRss() as rss:
    start = time.perf_counter()
    result = _ready(fn())
    first = time.perf_counter() - start
    result = None               # one result alive at a time: the peak is one call's
    result = _ready(fn())
  times = []
  spent = 0.0
  while len(times) < repeats or (spent < MIN_TIMED_S and len(times) < MAX_REPEATS):
    result = None
    start = time.perf_counter()
    result = _ready(fn())
    times.append(time.perf_counter() - start)
    spent += times[-1]
  median = float(np.median(times)) * 1e3
  return Measurement(median, max(first - median / 1e3, 0.0), first,
                     (rss.peak - rss.base) / 2**20, result)
