"""Runs the workloads, checks every result against float64, prints medians and ratios."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from jscorch.bench import (
  accelerator,
  build,
  data,
  first_result,
  models_graph,
  models_layers,
  structure,
  workloads,
)
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


# Model sizes live in each model module; here the repeats and the first-result graph
# (R-MAT scale, edge samples: the 131,072-node graph of the target).
MODEL_SIZES = {"full": dict(repeats=5, first_result=(17, 1_000_000)),
               "quick": dict(repeats=3, first_result=(12, 20_000))}
#: A contender whose relative error exceeds this is reported as wrong, not timed.
WRONG = 1e-3


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
  # Cora-sized calls, width 16: the adjacency (2,708 nodes, 10,556 edges: what dispatch
  # costs) and the bag-of-words features times a weight (1,433 words, 18 per row)
  specs += [("SpMM-small", lambda: workloads.spmm(data.uniform(2708, 10_556, seed=4), 16)),
            ("SpMM-small", lambda: workloads.spmm(data.uniform(2708, 49_216, seed=5,
                                                                cols=1433), 16))]
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


def _run_workload(wl, repeats: int, out) -> dict:
  """Times and checks every contender of ``wl``, prints its table, returns its row."""
  results = []
  for c in wl.contenders:
    try:
      m = measure(c.run, repeats)
      err = relative_error(c.to_numpy(m.result), wl.reference)
      results.append(dict(impl=c.name, median_ms=m.median_ms, compile_s=m.compile_s,
                          first_s=m.first_s, peak_mb=m.peak_mb, rel_err=err))
    except Exception as e:  # a contender that cannot run is reported, not fatal
      results.append(dict(impl=c.name, error=f"{type(e).__name__}: {str(e)[:120]}"))
  timed = [r for r in results if "median_ms" in r]
  for r in timed:           # a wrong result is reported as wrong, not timed
    if not r["rel_err"] <= WRONG:
      r["wrong"] = True
  correct = [r for r in timed if not r.get("wrong")]
  best = min((r["median_ms"] for r in correct), default=float("nan"))
  ours = next((r["median_ms"] for r in correct if r["impl"] == "jscorch"), float("nan"))
  for r in correct:
    r["ratio_to_fastest"] = r["median_ms"] / best
    r["speedup_of_jscorch"] = r["median_ms"] / ours
  for name, why in wl.skipped.items():
    results.append(dict(impl=name, skipped=why))
  _print_table(wl, results, out)
  row = dict(workload=wl.name, data=wl.data, results=results)
  if wl.notes:
    row["notes"] = wl.notes(results, repeats)
    for line in row["notes"]:
      out(f"  {line}")
  return row


def run(size_name: str, only=None, json_path=None, out=print, *, models: bool = False,
        cora: str | None = None) -> list[dict]:
  """Runs the kernel and structure workloads, or with ``models`` the model workloads
  (graph models on Cora from the file ``cora`` and on synthetic graphs, the autoencoder,
  attention and MoE layers, and the first-result measurement)."""
  quick = size_name == "quick"
  size = MODEL_SIZES[size_name] if models else SIZES[size_name]
  makes = (models_graph.build_workloads(quick, only, cora) + models_layers.build_workloads(
      quick, only)) if models else build_workloads(size, only)
  rows = []
  started = time.perf_counter()
  for make in makes:
    made = make()
    for wl in made if isinstance(made, list) else [made]:
      rows.append(_run_workload(wl, size["repeats"], out))
  if models and (only is None or "first-result" in only):
    rows.append(dict(workload="first result", results=first_result.report(
        *size["first_result"], out)))
  if not models and (only is None or "build" in only):
    rows.append(dict(workload="kernel build", results=build.report(out)))
  out(f"\ntotal {time.perf_counter() - started:.1f} s")
  if json_path:
    with open(json_path, "w") as f:
      json.dump(dict(size=size_name, models=models, rows=rows), f, indent=2)
  return rows


def _print_table(wl, results, out):
  out(f"\n{wl.name} on {wl.data}")
  out(f"  {'impl':<14} {'median ms':>10} {'x fastest':>9} {'jscorch x':>9} {'rel err':>9} "
      f"{'first s':>8} {'peak MB':>8}")
  for r in results:
    if r.get("wrong"):
      out(f"  {r['impl']:<14} WRONG: relative error {r['rel_err']:.1e} > {WRONG:.0e} "
          "(not timed)")
    elif "median_ms" in r:
      out(f"  {r['impl']:<14} {r['median_ms']:>10.2f} {r['ratio_to_fastest']:>9.2f} "
          f"{r['speedup_of_jscorch']:>9.2f} {r['rel_err']:>9.1e} {r['first_s']:>8.2f} "
          f"{r['peak_mb']:>8.0f}")
    elif "error" in r:
      out(f"  {r['impl']:<14} failed: {r['error']}")
    else:
      out(f"  {r['impl']:<14} skipped: {r['skipped']}")


#: Every name ``--only`` accepts, and with ``--models``.
WORKLOADS = ("SpMV", "SpMM", "SpMM-small", "SDDMM", "GCN", "GCN-A", "SpGEMM", "MTTKRP",
             "SparseLinear", "build", *structure.ROWS, *(key for key, _ in structure.UNION_ROWS))
MODEL_WORKLOADS = (*models_graph.ROWS, *models_layers.ROWS, "first-result")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
  parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
  parser.add_argument("--only", nargs="*", metavar="WORKLOAD",
                      help="subset of " + " ".join(WORKLOADS) + "; with --models of " +
                      " ".join(MODEL_WORKLOADS))
  parser.add_argument("--models", action="store_true",
                      help="whole models instead of kernels: GCN, GAT and GraphSAGE on Cora "
                      "and synthetic graphs, a weight-sparse autoencoder, a sparse-attention "
                      "block, an MoE layer, and the first result of a GCN")
  parser.add_argument("--platform", choices=("gpu", "tpu", "cpu"), default=None,
                      help="the accelerator workloads (" + " ".join(accelerator.ROWS) + ") on "
                      "this platform's first device, against BCOO, BCSR (cuSPARSE), dense, the "
                      "portable lowering and torch CUDA; exits 2 without such a device. 'cpu' "
                      "with --quick checks the harness in under a minute")
  parser.add_argument("--cora", metavar="PATH.npz", default=os.environ.get("JSCORCH_CORA"),
                      help="Cora in jscorch's .npz schema (docs/data.md) for --models "
                      "(default $JSCORCH_CORA; without it the quick size uses the embedded "
                      "synthetic graph and the full size only the synthetic graphs)")


def main(args: argparse.Namespace) -> int:
  """Entry point of ``python -m jscorch bench``; 2 (with the known names) for an unknown
  workload, before anything runs."""
  known = MODEL_WORKLOADS if args.models else WORKLOADS
  unknown = sorted(set(args.only or ()) - set(known))
  if unknown and not args.platform:
    print(f"bench: unknown workload(s) {', '.join(unknown)}"
          f"{' with --models' if args.models else ''}; expected names among "
          f"{' '.join(known)}.", file=sys.stderr)
    return 2
  if args.platform:
    unknown = sorted(set(args.only or ()) - set(accelerator.ROWS))
    device, reason = accelerator.device_or_reason(args.platform)
    if unknown or device is None:
      why = (f"unknown workload(s) {', '.join(unknown)}; expected names among "
             f"{' '.join(accelerator.ROWS)}" if unknown else
             f"{reason}; run it on a machine with that device (for a GPU, jax[cuda12])")
      print(f"bench: --platform {args.platform}: {why}.", file=sys.stderr)
      return 2
    started = time.perf_counter()
    rows = accelerator.run(args.platform, args.quick, set(args.only) if args.only else None,
                           _run_workload)
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    if args.json:
      with open(args.json, "w") as f:
        json.dump(dict(platform=args.platform, quick=args.quick, rows=rows), f, indent=2)
    return 0
  if args.cora and not os.path.isfile(args.cora):
    print(f"bench: --cora {args.cora}: no such file; pass the path of Cora in jscorch's "
          ".npz schema (docs/data.md).", file=sys.stderr)
    return 2
  run("quick" if args.quick else "full", set(args.only) if args.only else None, args.json,
      models=args.models, cora=args.cora)
  return 0
