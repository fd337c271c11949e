"""Tests of ``jscorch.train`` on a small synthetic graph (the Cora bar is in test_accuracy.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jscorch import graph, train

sys.path.insert(0, str(Path(__file__).resolve().parent / "nn"))
import layer_util as lu  # noqa: E402

G = graph.synthetic_sbm(num_nodes=120, num_features=30, num_classes=3, train_per_class=10,
                        seed=4)


def test_normalize_rows():
  x = G.features.to_scipy().toarray()
  expected = x / np.maximum(x.sum(1, keepdims=True), 1e-30)
  np.testing.assert_allclose(train.normalize_rows(G.features).to_scipy().toarray(), expected,
                             rtol=1e-6)
  np.testing.assert_allclose(train.normalize_rows(jnp.asarray(x)), expected, rtol=1e-6)


def test_fit_records_curves_and_updates_the_model():
  model = train.make_gcn(G, seed=0)
  before = np.asarray(model.conv1.kernel[...]).copy()
  seen = []
  h = train.fit(model, G, epochs=20, callback=lambda epoch, m: seen.append((epoch, m)))
  assert [e for e, _ in seen] == list(range(20))
  assert set(seen[0][1]) == {"loss", "train_acc", "val_acc", "test_acc"}
  assert h.loss.shape == h.val_acc.shape == (20,)
  assert h.loss[-1] < h.loss[0]
  assert 0 <= h.best_epoch < 20 and h.test_acc_at_best_val == h.test_acc[h.best_epoch]
  assert not np.allclose(before, np.asarray(model.conv1.kernel[...]))
  assert h.seconds_per_epoch > 0 and h.compile_seconds > 0


def test_fit_seeds_trains_independent_copies():
  hs = train.fit_seeds(lambda rngs: train.GCN(G.num_features, 8, G.num_classes, rngs=rngs),
                       G, [0, 1], epochs=15)
  assert len(hs) == 2 and all(h.loss.shape == (15,) for h in hs)
  assert not np.allclose(hs[0].loss, hs[1].loss)             # different initialisations
  assert all(h.loss[-1] < h.loss[0] for h in hs)


def test_gat_model_runs():
  model = train.make_gat(G, hidden=4, heads=2, seed=0)
  assert model.conv1.kernel.shape == (G.num_features, 8)
  h = train.fit(model, G, epochs=3, lr=0.005)
  assert np.all(np.isfinite(h.loss))

