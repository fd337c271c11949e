"""``bench --models``: the graph models' contenders compute the float64 model, a wrong
contender is reported as wrong, and the command line refuses bad requests."""
import dataclasses

import numpy as np
import pytest

from jscorch import cli
from jscorch.bench import gnn_jax, graphs, models_graph, runner
from jscorch.bench.workloads import Contender, Workload


@pytest.fixture(scope="module")
def small_graph():
  return graphs.sbm(300, degree=6, features=12, classes=4, seed=3)


def test_graphs_are_symmetric_binary_and_loop_free(small_graph):
  for g in (small_graph, graphs.rmat(9, 3000, features=5, classes=3)):
    a = g.adj
    assert (a != a.T).nnz == 0 and np.all(a.data == 1) and a.diagonal().sum() == 0
    assert a.has_sorted_indices and g.x.shape == (g.num_nodes, g.x.shape[1])
    assert g.labels.max() < g.num_classes and len(g.train) >= g.num_classes


def test_load_npz_reads_the_documented_schema(tmp_path):
  from jscorch import graph
  g = graph.synthetic_sbm(num_nodes=60, num_features=10, num_classes=3, seed=2)
  graph.save_npz(tmp_path / "tiny.npz", g)
  h = graphs.load_npz(str(tmp_path / "tiny.npz"))
  assert h.name == "tiny" and h.num_classes == 3
  assert (h.adj != g.adj.to_scipy()).nnz == 0
  np.testing.assert_array_equal(h.x, np.asarray(g.features.todense()))
  np.testing.assert_array_equal(h.train, np.asarray(g.train_index))


def test_edge_list_reference_matches_the_dense_formula(small_graph):
  """The float64 reference (edge list) is the textbook dense GCN ``Â relu(Â X W1 + b1) W2 + b2``."""
  g = small_graph
  p = gnn_jax.init_params("gcn", 12, 5, 4, seed=1)
  a = np.asarray(g.adj.todense(), np.float64) + np.eye(g.num_nodes)
  d = a.sum(1) ** -0.5
  norm = d[:, None] * a * d[None, :]
  x = g.x.astype(np.float64)
  h = np.maximum(norm @ (x @ p["W1"]) + p["b1"], 0)
  want = norm @ (h @ p["W2"]) + p["b2"]
  (got,) = gnn_jax.reference("gcn", p, g, train=False)
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model", ["gcn", "sage", "gat"])
def test_every_contender_matches_float64(small_graph, model):
  """Inference (logits) and a training epoch (loss and every gradient) of each contender —
  jscorch's layers, segment_sum, BCOO, dense, torch.sparse and PyG when installed — agree
  with the float64 edge-list model; a gradient off by 1 % is caught."""
  loads = models_graph.model_workloads(model, small_graph, False, 4)
  names = {c.name for c in loads[0].contenders}
  assert {"jscorch", "segment_sum", "dense"} <= names
  for wl in loads:
    for c in wl.contenders:
      err = runner.relative_error(c.to_numpy(c.run()), wl.reference)
      assert err < 1e-5, (wl.name, c.name, err)
  train = loads[1]
  got = list(train.contenders[0].to_numpy(train.contenders[0].run()))
  assert len(got) == 1 + len(gnn_jax.PARAMS[model])
  got[1] = got[1] * 1.01
  assert runner.relative_error(tuple(got), train.reference) > 1e-3


def test_a_wrong_contender_is_reported_not_timed():
  ref = (np.arange(4.0),)
  wl = Workload("toy", "four numbers", ref, [
      Contender("jscorch", lambda: np.arange(4.0)),
      Contender("liar", lambda: np.arange(4.0) + 1)], {"absent": "not installed"})
  lines = []
  row = runner._run_workload(wl, 2, lines.append)
  ours, liar, absent = row["results"]
  assert ours["ratio_to_fastest"] == 1.0 and liar["wrong"] and "ratio_to_fastest" not in liar
  assert absent == dict(impl="absent", skipped="not installed")
  text = "\n".join(lines)
  assert "liar           WRONG: relative error" in text and "(not timed)" in text


def test_gcn_inference_reports_its_dense_projection_floor(small_graph):
  """On dense features the GCN inference table ends with what its dense ``X W1`` alone
  costs and the time a 4x lead over the fastest other contender leaves; sparse features
  (no dense product) get no such note."""
  infer = models_graph.model_workloads("gcn", small_graph, False, 4)[0]
  fast = dict(impl="segment_sum", median_ms=8.0)
  ours = dict(impl="jscorch", median_ms=1.0)
  lines = infer.notes([ours, fast, dict(impl="liar", median_ms=0.5, wrong=True)], 2)
  assert lines[0].startswith("floor: the first layer's dense X·W1 (300 x 12 by 12 x 4) "
                             "alone takes XLA ")
  assert lines[1] == ("a 4x lead over the fastest other contender (segment_sum, 8.00 ms) "
                      "leaves 2.00 ms for the whole model")
  assert len(infer.notes([ours], 2)) == 1
  printed = []
  row = runner._run_workload(infer, 1, printed.append)
  assert row["notes"][0].startswith("floor:") and printed[-2].startswith("  floor:")
  x = np.zeros_like(small_graph.x)
  x[::20, 0] = 1.0
  sparse = dataclasses.replace(small_graph, x=x)
  assert sparse.sparse_features
  assert models_graph.model_workloads("gcn", sparse, False, 4)[0].notes is None


def test_a_reference_that_cannot_fit_skips_the_workload(small_graph, capsys):
  """GAT's float64 reference on a graph too large for this machine's memory: the workload
  is printed with the reason and nothing runs (at 1M nodes it would need ~32 GiB)."""
  class Huge:
    nnz, shape = 10**12, (10**9, 10**9)
  big = graphs.HostGraph("huge", Huge(), small_graph.x, small_graph.labels, small_graph.train,
                         small_graph.num_classes)
  assert models_graph._reference_too_large("gcn", big, 8) is None
  assert models_graph._reference_too_large("gat", small_graph, 8) is None
  (wl,) = models_graph.model_workloads("gat", big, True, 8)
  runner._run_workload(wl, 1, print)
  assert "every contender skipped: the float64 edge-list reference needs about" in \
      capsys.readouterr().out


def test_models_registry_selects_rows():
  assert len(models_graph.build_workloads(True, None)) == 3        # embedded graph, 3 models
  assert len(models_graph.build_workloads(True, {"GAT"})) == 1
  assert models_graph.build_workloads(True, {"MoE"}) == []
  assert len(models_graph.build_workloads(False, {"GCN"})) == len(models_graph.FULL["graphs"])


def test_models_command_line_refuses_bad_requests(capsys, tmp_path):
  assert cli.main(["bench", "--models", "--only", "GCN", "SpMV"]) == 2
  err = capsys.readouterr().err
  assert "unknown workload(s) SpMV with --models" in err and "first-result" in err
  assert cli.main(["bench", "--models", "--cora", str(tmp_path / "none.npz")]) == 2
  assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_first_result_is_measured_in_fresh_processes():
  """Four fresh processes (cold, filling the caches, warm kernels, warm kernels and XLA
  cache) report their setup, first-call and repeated-call times."""
  from jscorch.bench import first_result
  t = first_result.measure(9, 3000, runs=1)
  assert set(t) == {"cold", "warm kernels", "warm kernels + XLA cache"}
  for r in t.values():
    assert 0 < r["setup_s"] and 0 < r["first_call_s"] <= r["total_s"] and r["hot_ms"] > 0
    assert r["runs"] == [r["total_s"]]


def test_first_result_reports_the_run_of_median_total(monkeypatch):
  """Each condition is measured ``runs`` times, cold runs with their own empty kernel
  cache, the caches filled once; the row is the run of median total."""
  from jscorch.bench import first_result
  calls, totals = [], iter([0.9, 0.2, 0.3, 0.1, 0.8, 0.5, 0.4, 0.7, 0.6, 0.35])

  def child(scale, edges, kernels, xla=""):
    calls.append((kernels.rsplit("/", 1)[-1], bool(xla)))
    return dict(setup_s=0.1, first_call_s=0.1, total_s=next(totals), hot_ms=1.0)
  monkeypatch.setattr(first_result, "_child", child)
  t = first_result.measure(9, 3000, runs=3)
  assert calls == [("cold0", False), ("kernels", True), ("kernels", False), ("kernels", True),
                   ("cold1", False), ("kernels", False), ("kernels", True),
                   ("cold2", False), ("kernels", False), ("kernels", True)]
  assert t["cold"]["runs"] == [0.7, 0.8, 0.9] and t["cold"]["total_s"] == 0.8
  assert t["warm kernels"]["runs"] == [0.3, 0.5, 0.6] and t["warm kernels"]["total_s"] == 0.5
  assert t["warm kernels + XLA cache"]["total_s"] == 0.35
