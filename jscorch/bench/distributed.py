"""``python -m jscorch bench --devices N``: sharded SpMM memory and communication per device.

For meshes of 1, 2, 4, ... N devices (sub-meshes of the devices JAX has; run with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` on a CPU), shards a uniform
and a power-law (R-MAT) matrix with :func:`jscorch.distributed.shard` and reports,
per device:

* **adjacency bytes**: the matrix buffers one device holds (values, ``pos``,
  ``crd``, flags; the halo plan separately) — falls ~1/N;
* **peak bytes**: XLA's memory analysis of the compiled SpMM program for one device
  (arguments + outputs + temporaries: adjacency, operand, gathered rows, result);
* **bytes communicated per SpMM**, read from the collectives in the compiled HLO
  (``collective-permute``, ``all-gather``, ``reduce-scatter``, ...) as the bytes one
  device receives, next to the model of :func:`jscorch.distributed.comm_bytes`;
* the median time of one SpMM, and the result's error against float64 scipy.

Simulated devices share the host's cores, so times show overheads, not scaling.
"""
from __future__ import annotations

import math
import re
import time

import numpy as np

from jscorch.bench import data

SIZES = {
    "full": dict(scale=17, edges=2_300_000, width=64, repeats=5),
    "quick": dict(scale=13, edges=100_000, width=32, repeats=3),
}

_COLLECTIVE = re.compile(
    r"=\s*(\(?[^=]*?\)?)\s+(collective-permute|all-gather|all-to-all|reduce-scatter|"
    r"all-reduce)(?:-start)?\(")
_SHAPE = re.compile(r"(pred|s8|u8|s16|u16|bf16|f16|s32|u32|f32|s64|u64|f64|c64|c128)"
                    r"\[([0-9,]*)\]")
_BYTES = dict(pred=1, s8=1, u8=1, s16=2, u16=2, bf16=2, f16=2, s32=4, u32=4, f32=4, s64=8,
              u64=8, f64=8, c64=8, c128=16)


def _group_size(line: str, n_devices: int) -> int:
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
  if iota:
    return int(iota.group(2))
  groups = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
  if groups:
    return len(groups.group(1).split(","))
  return n_devices


def hlo_comm_bytes(hlo_text: str, n_devices: int) -> int:
  """Bytes one device receives in the collectives of a compiled SPMD HLO module."""
  total = 0.0
  for line in hlo_text.splitlines():
    match = _COLLECTIVE.search(line)
    if not match or "-done" in line:
      continue
    shape, op = match.groups()
    size = sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
               for t, dims in _SHAPE.findall(shape))
    g = _group_size(line, n_devices)
    if op == "collective-permute":
      total += size
    elif op in ("all-gather", "all-to-all"):
      total += size * (g - 1) / g
    elif op == "reduce-scatter":
      total += size * (g - 1)
    else:  # all-reduce, ring algorithm
      total += 2 * size * (g - 1) / g
  return int(total)


def _matrices(size):
  n = 1 << size["scale"]
  rmat = data.rmat(size["scale"], size["edges"])
  uniform = data.uniform(n, size["edges"], seed=1)
  return [("uniform", uniform, None), ("rmat", rmat, None), ("rmat", rmat, "degree")]


def _device_counts(n_devices: int):
  counts, k = [], 1
  while k <= n_devices:
    counts.append(k)
    k *= 2
  if counts[-1] != n_devices:
    counts.append(n_devices)
  return counts


def _layouts(k: int):
  out = [("1-D", (k,), "x", "allgather"), ("1-D", (k,), "x", "halo")]
  if k >= 4:
    pr = 2 ** math.ceil(math.log2(k) / 2)
    out.append(("2-D", (pr, k // pr), ("x", "y"), "allgather"))
  return out


def run_devices(n_devices: int, quick: bool, out=print, *, size: dict | None = None) -> dict:
  """The ``--devices N`` benchmark (see the module docstring); returns the measurements.

  Args:
    n_devices: the largest mesh; JAX must have at least this many devices.
    quick: small matrices (seconds on 8 simulated CPU devices).
    out: where the table goes (``print``).
    size: overrides the matrix size, as ``dict(scale=, edges=, width=, repeats=)``
      (the tests use a smaller one).

  Returns:
    ``dict(n_devices=, size=, rows=[...], adjacency_scaling={...})``: one row per
    matrix × layout × exchange × device count, with ``adjacency_bytes``,
    ``halo_bytes``, ``peak_bytes``, ``comm_bytes`` (from the HLO),
    ``comm_bytes_model``, ``rows_per_shard``, ``imbalance``, ``median_ms``, ``rel_err``;
    ``adjacency_scaling[matrix][layout]`` lists the adjacency bytes per device
    for each device count, and ``ratio`` the fall from 1 device to ``n_devices``.
  """
  import jax
  from jax.sharding import AxisType

  from jscorch import distributed as jsd
  from jscorch.interop import from_scipy

  if jax.device_count() < n_devices:
    raise RuntimeError(
        f"run_devices: {n_devices} devices requested but JAX has {jax.device_count()}; start "
        f"the process with XLA_FLAGS=--xla_force_host_platform_device_count={n_devices}.")
  size_name = ("quick" if quick else "full") if size is None else "custom"
  size = SIZES[size_name] if size is None else size
  width = size["width"]
  rows, scaling = [], {}
  started = time.perf_counter()
  out(f"\nsharded SpMM, width {width}, float32, up to {n_devices} devices "
      f"({jax.devices()[0].platform})")
  out(f"  {'matrix':<14} {'layout':<6} {'exchange':<9} {'dev':>3} {'rows/sh':>8} {'imbal':>6} "
      f"{'adj KB/dev':>10} {'halo KB':>8} {'peak KB/dev':>11} {'comm KB':>9} "
      f"{'model KB':>9} {'ms':>7} {'rel err':>8}")
  rng = np.random.default_rng(0)
  for name, csr, reorder in _matrices(size):
    label = name + ("+degree" if reorder else "")
    A = from_scipy(csr.scipy())
    x = rng.standard_normal((csr.shape[1], width)).astype(np.float32)
    ref = csr.scipy(np.float64) @ x.astype(np.float64)
    for k in _device_counts(n_devices):
      for kind, shape, axes, exchange in _layouts(k):
        names = ("x", "y")[:len(shape)]
        mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape),
                             devices=jax.devices()[:k])
        As = jsd.shard(A, mesh, axis=axes, reorder=reorder, halo=exchange == "halo")
        xs = As.shard_cols(x)
        ex = None if kind == "2-D" else exchange
        f = jax.jit(lambda a, v, ex=ex: jsd.spmm(a, v, exchange=ex))
        compiled = f.lower(As, xs).compile()
        mem = compiled.memory_analysis()
        peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
        comm = hlo_comm_bytes(compiled.as_text(), k)
        y = compiled(As, xs).block_until_ready()
        times = []
        for _ in range(size["repeats"]):
          t0 = time.perf_counter()
          compiled(As, xs).block_until_ready()
          times.append((time.perf_counter() - t0) * 1e3)
        got = np.asarray(As.unshard_rows(y), np.float64)
        err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        per = As.bytes_per_device()
        adj = per["data"] + per["pos"] + per["crd"] + per["loops"] + per["ids"]
        row = dict(matrix=label, layout=kind, exchange=exchange, devices=k,
                   mesh=dict(mesh.shape), rows_per_shard=As.layout.rows.size,
                   imbalance=As.imbalance, adjacency_bytes=adj, halo_bytes=per["halo"],
                   peak_bytes=int(peak), comm_bytes=comm,
                   comm_bytes_model=jsd.comm_bytes(As, ex or "allgather", width),
                   median_ms=float(np.median(times)), rel_err=err)
        rows.append(row)
        key = f"{kind} {exchange}"
        scaling.setdefault(label, {}).setdefault(key, []).append((k, adj))
        out(f"  {label:<14} {kind:<6} {exchange:<9} {k:>3} {row['rows_per_shard']:>8} "
            f"{row['imbalance']:>6.3f} {adj / 1e3:>10.1f} {per['halo'] / 1e3:>8.1f} "
            f"{peak / 1e3:>11.1f} {comm / 1e3:>9.1f} {row['comm_bytes_model'] / 1e3:>9.1f} "
            f"{row['median_ms']:>7.2f} {err:>8.1e}")
  out("\nadjacency bytes per device, 1 device -> most devices (ideal: 1/N):")
  summary = {}
  for label, by_layout in scaling.items():
    for key, points in by_layout.items():
      if len(points) < 2:
        continue
      (k0, b0), (k1, b1) = points[0], points[-1]
      summary.setdefault(label, {})[key] = dict(points=points, ratio=b1 / b0,
                                                ideal=k0 / k1)
      out(f"  {label:<14} {key:<14} {b0 / 1e3:>9.1f} KB -> {b1 / 1e3:>8.1f} KB at {k1} "
          f"devices: x{b1 / b0:.3f} (ideal x{k0 / k1:.3f})")
  out(f"\ntotal {time.perf_counter() - started:.1f} s")
  return dict(n_devices=n_devices, size=size_name, rows=rows,
              adjacency_scaling=summary)
