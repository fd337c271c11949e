"""The model workloads of ``python -m jscorch bench --models`` (``jscorch.bench.models_layers``).

Every contender of every workload, at tiny sizes, matches its float64 reference; a
result 1 % off is caught; the registry builds the rows asked for.
"""
import functools

import numpy as np
import pytest

from jscorch.bench import models_layers as ml
from jscorch.bench.runner import relative_error

#: Tiny workloads (id -> builder), every workload function and option covered once.
TINY = {
    "autoencoder-inference": lambda: ml.autoencoder(0.9, batch=8, dims=(32, 16), train=False),
    "autoencoder-train": lambda: ml.autoencoder(0.9, batch=8, dims=(32, 16), train=True),
    "attention-bigbird-fwd": lambda: ml.attention_block("bigbird", 64, 16, 2, train=False),
    "attention-longformer-fwd+bwd": lambda: ml.attention_block("longformer", 64, 16, 2,
                                                               train=True),
    "moe-top1-fwd+bwd": lambda: ml.moe(8, 1, tokens=64, features=16, train=True),
    "moe-top2-fwd": lambda: ml.moe(8, 2, tokens=64, features=16, train=False),
    "moe-top2-fwd+bwd": lambda: ml.moe(8, 2, tokens=64, features=16, train=True),
}

#: The contenders every workload has, torch or not.
JAX_CONTENDERS = {"Autoencoder": {"jscorch", "dense"},
                  "Attention": {"jscorch", "dense masked"},
                  "MoE": {"jscorch", "dense dispatch", "ragged_dot"}}


@functools.cache
def _results(key):
  """The workload and every contender's result as numpy (each compiled and run once)."""
  wl = TINY[key]()
  return wl, {c.name: c.to_numpy(c.run()) for c in wl.contenders}


@pytest.mark.parametrize("key", TINY)
def test_every_contender_matches_the_float64_reference(key):
  wl, results = _results(key)
  family = wl.name.split()[0]
  assert JAX_CONTENDERS[family] <= set(results), wl.name
  for name, got in results.items():
    assert [np.shape(g) for g in got] == [np.shape(w) for w in wl.reference], name
    assert relative_error(got, wl.reference) < 1e-4, (key, name)


@pytest.mark.parametrize("key", TINY)
def test_a_result_one_percent_off_is_caught(key):
  wl, results = _results(key)
  got = list(results["jscorch"])
  got[-1] = got[-1] * 1.01                  # a gradient (train) or the output (inference)
  assert relative_error(got, wl.reference) > 1e-3


def test_torch_contenders_run():
  pytest.importorskip("torch")
  for key, name in (("autoencoder-train", "torch.sparse"), ("attention-bigbird-fwd", "torch")):
    wl, results = _results(key)
    assert name in results and not wl.skipped, key


def test_without_torch_the_torch_contenders_are_skipped(monkeypatch):
  monkeypatch.setattr(ml, "_torch", lambda: None)
  wl = ml.autoencoder(0.9, batch=4, dims=(16, 8), train=False)
  assert [c.name for c in wl.contenders] == ["jscorch", "dense"]
  assert "not installed" in wl.skipped["torch.sparse"]


def test_routing_has_no_near_ties():
  gate_kernel = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
  x = ml._routable_tokens(1, 500, gate_kernel, 2, margin=0.05)
  logits = np.sort(x.astype(np.float64) @ gate_kernel, axis=1)
  assert np.all(logits[:, -2] - logits[:, -3] >= 0.05)


@pytest.mark.parametrize("kind", ml.MASKS)
def test_masks_are_90_percent_sparse_at_4096_and_hold_the_diagonal(kind):
  mask, _ = ml._mask(kind, 4096)
  dense = ml._dense_mask(mask)
  assert dense.mean() <= 0.1
  assert dense[np.arange(4096), np.arange(4096)].all()


def test_build_workloads_selects_rows():
  every = ml.build_workloads(True, None)
  assert {make.func for make in every} == {ml.autoencoder, ml.attention_block, ml.moe}
  assert all(callable(make) for make in every)
  assert {make.func for make in ml.build_workloads(True, {"MoE"})} == {ml.moe}
  assert ml.build_workloads(True, {"nothing"}) == []
  assert len(ml.build_workloads(False, None)) == 8 + 16 + 20
  assert set(ml.ROWS) == {"autoencoder", "attention", "MoE"}
