"""Runs the workloads, checks every result against float64, prints medians and ratios."""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from jscorch.bench import build, data, structure, workloads
from jscorch.bench.timing import measure

# (scale of the R-MAT / uniform matrices, edges, SpGEMM (scale, edges) of the uniform and the
# R-MAT matrix, tensor size and nnz). The R-MAT 32k SpGEMM (17M result entries) is in both.
SIZES = {
    "full": dict(scale=17, edges=2_300_000, width=64, spgemm_uniform=(15, 200_000),
                 spgemm_rmat=(15, 200_000), tensor=(100_000, 2_000_000), rank=32, repeats=7,
                 coalesce=1_000_000, graph_edges=2_000_000, linear=(2048, 512, 256)),
    "quick": dict(scale=14, edges=250_000, width=64, spgemm_uniform=(12, 30_000),
                  spgemm_rmat=(15, 200_000), tensor=(20_000, 200_000), rank=32, repeats=3,
                  coalesce=125_000, graph_edges=250_000, linear=(512, 256, 128)),
}


def relative_error(got, want) -> float:
  """``max |g - w| / |w|`` (Frobenius) over the outputs; scipy sparse ``want`` values are
  compared as sparse matrices (over the union of both patterns); inf on a shape mismatch."""
  import scipy.sparse as sp
  errs = []
  for g, w in zip(got, want):
    if sp.issparse(w):
      if not sp.issparse(g) or g.shape != w.shape:
        return float("inf")
      diff = (sp.csr_matrix(g, dtype=np.float64) - w).tocsr()
      errs.append(np.linalg.norm(diff.data) / max(np.linalg.norm(w.data), 1e-30))
      continue
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    if g.shape != w.shape:
      return float("inf")
    errs.append(np.linalg.norm((g - w).ravel()) / max(np.linalg.norm(w.ravel()), 1e-30))
  return float(max(errs))


def build_workloads(size: dict, only: set | None):
  n = 1 << size["scale"]
  mats = [data.uniform(n, size["edges"], seed=1), data.rmat(size["scale"], size["edges"])]
  specs = []
  for m in mats:
    specs += [("SpMV", lambda m=m: workloads.spmm(m, 0)),
              ("SpMM", lambda m=m: workloads.spmm(m, size["width"])),
              ("SDDMM", lambda m=m: workloads.sddmm(m, size["width"])),
              ("GCN", lambda m=m: workloads.gcn(m, size["width"], False)),
              ("GCN-A", lambda m=m: workloads.gcn(m, size["width"], True))]
  u_scale, u_edges = size["spgemm_uniform"]
  r_scale, r_edges = size["spgemm_rmat"]
  specs += [("SpGEMM", lambda: workloads.spgemm(data.uniform(1 << u_scale, u_edges, seed=2))),
            ("SpGEMM", lambda: workloads.spgemm(data.rmat(r_scale, r_edges, seed=3)))]
  t_n, t_nnz = size["tensor"]
  specs += [("MTTKRP", lambda: workloads.mttkrp(t_n, *data.tensor3(t_n, t_nnz), size["rank"]))]
  batch, n_in, n_out = size["linear"]
  specs += [("SparseLinear", lambda d=d: workloads.sparse_linear(batch, n_in, n_out, d))
            for d in (0.1, 0.01)]
  return [make for key, make in specs if only is None or key in only] + \
      structure.build_workloads(size, only)


def run(size_name: str, only=None, json_path=None, out=print) -> list[dict]:
  size = SIZES[size_name]
  rows = []
  started = time.perf_counter()
  for make in build_workloads(size, only):
    wl = make()
    results = []
    for c in wl.contenders:
      try:
        m = measure(c.run, size["repeats"])
        err = relative_error(c.to_numpy(m.result), wl.reference)
        results.append(dict(impl=c.name, median_ms=m.median_ms, compile_s=m.compile_s,
                            peak_mb=m.peak_mb, rel_err=err))
      except Exception as e:  # a contender that cannot run is reported, not fatal
        results.append(dict(impl=c.name, error=f"{type(e).__name__}: {str(e)[:120]}"))
    timed = [r for r in results if "median_ms" in r]
    best = min((r["median_ms"] for r in timed), default=float("nan"))
    ours = next((r["median_ms"] for r in timed if r["impl"] == "jscorch"), float("nan"))
    for r in timed:
      r["ratio_to_fastest"] = r["median_ms"] / best
      r["speedup_of_jscorch"] = r["median_ms"] / ours
    for name, why in wl.skipped.items():
      results.append(dict(impl=name, skipped=why))
    _print_table(wl, results, out)
    rows.append(dict(workload=wl.name, data=wl.data, results=results))
  if only is None or "build" in only:
    rows.append(dict(workload="kernel build", results=build.report(out)))
  out(f"\ntotal {time.perf_counter() - started:.1f} s")
  if json_path:
    with open(json_path, "w") as f:
      json.dump(dict(size=size_name, rows=rows), f, indent=2)
  return rows


def _print_table(wl, results, out):
  out(f"\n{wl.name} on {wl.data}")
  out(f"  {'impl':<12} {'median ms':>10} {'x fastest':>9} {'jscorch x':>9} {'rel err':>9} "
      f"{'compile s':>9} {'peak MB':>8}")
  for r in results:
    if "median_ms" in r:
      out(f"  {r['impl']:<12} {r['median_ms']:>10.2f} {r['ratio_to_fastest']:>9.2f} "
          f"{r['speedup_of_jscorch']:>9.2f} {r['rel_err']:>9.1e} {r['compile_s']:>9.2f} "
          f"{r['peak_mb']:>8.0f}")
    elif "error" in r:
      out(f"  {r['impl']:<12} failed: {r['error']}")
    else:
      out(f"  {r['impl']:<12} skipped: {r['skipped']}")


#: Every name ``--only`` accepts.
WORKLOADS = ("SpMV", "SpMM", "SDDMM", "GCN", "GCN-A", "SpGEMM", "MTTKRP", "SparseLinear",
             "build", *structure.ROWS, *(key for key, _ in structure.UNION_ROWS))


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
  parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
  parser.add_argument("--only", nargs="*", metavar="WORKLOAD",
                      help="subset of " + " ".join(WORKLOADS))


def main(args: argparse.Namespace) -> int:
  """Entry point of ``python -m jscorch bench``; 2 (with the known names) for an unknown
  workload, before anything runs."""
  unknown = sorted(set(args.only or ()) - set(WORKLOADS))
  if unknown:
    print(f"bench: unknown workload(s) {', '.join(unknown)}; expected names among "
          f"{' '.join(WORKLOADS)}.", file=sys.stderr)
    return 2
  run("quick" if args.quick else "full", set(args.only) if args.only else None, args.json)
  return 0
