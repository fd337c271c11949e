"""Tests of ``MoE``: the sparse gate, the dispatch vs a dense reference, the auxiliary loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import layer_util as lu
import util
from jscorch import nn

E, F_IN, F_OUT, T = 4, 5, 3, 6


def moe_ref(x, p, top_k, renormalize=None):
  logits = x @ p[("gate", "kernel")]
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  top = np.argsort(-logits, axis=1)[:, :top_k]
  gate = np.zeros_like(probs)
  rows = np.arange(len(x))[:, None]
  renormalize = top_k > 1 if renormalize is None else renormalize
  kept = probs[rows, top]
  gate[rows, top] = kept / kept.sum(1, keepdims=True) if renormalize else kept
  experts = np.einsum("ti,eio->teo", x, p[("kernel",)]) + p[("bias",)][None]
  y = np.einsum("te,teo->to", gate, experts)
  f = np.zeros(probs.shape[1])
  np.add.at(f, top.ravel(), 1)
  aux = probs.shape[1] * np.sum(f / (len(x) * top_k) * probs.mean(0))
  return y, aux, gate


def _model(dtype=jnp.float32, top_k=2, seed=0, dispatch="auto"):
  model = nn.MoE(E, F_IN, F_OUT, top_k=top_k, param_dtype=dtype, dispatch=dispatch,
                 rngs=nnx.Rngs(seed))
  model.bias[...] = jnp.asarray(util.random_values(seed, (E, F_OUT), np.dtype(dtype)))
  return model


@pytest.mark.parametrize("top_k", [1, 2])
def test_matches_dense_reference_float64(top_k):
  with jax.enable_x64(True):
    model = _model(jnp.float64, top_k)
    x = util.random_values(1, (2, T // 2, F_IN), np.float64)
    y, aux = model(jnp.asarray(x))
    assert y.shape == (2, T // 2, F_OUT) and aux.shape == ()
    y_ref, aux_ref, gate_ref = moe_ref(x.reshape(T, F_IN), lu.params_of(model), top_k)
    util.assert_allclose(y.reshape(T, F_OUT), y_ref, dtype=np.float64)
    util.assert_allclose(aux, aux_ref, dtype=np.float64)
    gate, probs = model.gates(jnp.asarray(x))
    assert gate.shape == (T, E) and gate.nse == T * top_k
    np.testing.assert_array_equal(np.asarray(gate.pos(1)), np.arange(T + 1) * top_k)
    util.assert_allclose(gate.to_scipy().toarray(), gate_ref, dtype=np.float64)
    util.assert_allclose(probs.sum(1), np.ones(T), dtype=np.float64)


def _dense_moe_task_loss(x, gate_kernel, kernel, bias, top_k, renormalize):
  """The task loss of a dense-gate MoE in jnp (the top-k choice held fixed, as in the layer)."""
  logits = x @ gate_kernel
  probs = jax.nn.softmax(logits, axis=-1)
  _, top = jax.lax.top_k(jax.lax.stop_gradient(logits), top_k)
  mask = jnp.zeros_like(probs).at[jnp.arange(x.shape[0])[:, None], top].set(1.0)
  gate = mask * probs
  if renormalize:
    gate = gate / gate.sum(1, keepdims=True)
  y = jnp.einsum("te,ti,eio->to", gate, x, kernel) + gate @ bias
  return jnp.sum(jnp.sin(y))


@pytest.mark.parametrize("top_k", [1, 2, E])
def test_router_gets_task_gradient(top_k):
  """Every top_k trains the router from the task loss alone (Switch scales the top-1 output
  by p_e; top_k > 1 renormalises over the kept experts), matching a dense-gate reference."""
  with jax.enable_x64(True):
    model = _model(jnp.float64, top_k, seed=7)
    x = jnp.asarray(util.random_values(8, (T, F_IN), np.float64))

    def task_loss(m):
      y, _ = m(x)
      return jnp.sum(jnp.sin(y))                 # no auxiliary loss

    g = nnx.grad(task_loss)(model).gate.kernel[...]
    p = lu.params_of(model)
    g_ref = jax.grad(_dense_moe_task_loss, argnums=1)(
        x, jnp.asarray(p[("gate", "kernel")]), jnp.asarray(p[("kernel",)]),
        jnp.asarray(p[("bias",)]), top_k, top_k > 1)
    util.assert_allclose(g, g_ref, dtype=np.float64)
    assert float(jnp.max(jnp.abs(g))) > 1e-3, g


def test_renormalized_top1_has_no_router_task_gradient():
  """The documented trap of ``renormalize=True`` with ``top_k=1``: the kept weight is 1."""
  model = nn.MoE(E, F_IN, F_OUT, top_k=1, renormalize=True, rngs=nnx.Rngs(0))
  assert not nn.MoE(E, F_IN, F_OUT, top_k=1, rngs=nnx.Rngs(0)).renormalize
  assert model.renormalize and nn.MoE(E, F_IN, F_OUT, top_k=2, rngs=nnx.Rngs(0)).renormalize
  x = jnp.asarray(util.random_values(9, (T, F_IN), np.float32))
  gate, _ = model.gates(x)
  np.testing.assert_array_equal(np.asarray(gate.data), np.ones(T, np.float32))
  g = nnx.grad(lambda m: jnp.sum(m(x)[0] ** 2))(model).gate.kernel[...]
  np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_load_balancing_loss_is_one_when_balanced():
  model = _model()
  model.gate.kernel[...] = jnp.zeros((F_IN, E))          # uniform router
  _, aux = model(jnp.ones((8, F_IN)))
  # f sums to 1 and P_e = 1/E, so E * sum_e f_e / E = 1 whatever the ties pick.
  np.testing.assert_allclose(float(aux), 1.0, rtol=1e-6)


def test_check_grads():
  with jax.enable_x64(True):
    model = _model(jnp.float64, 2, seed=3)
    x = jnp.asarray(util.random_values(4, (T, F_IN), np.float64))
    f, params = lu.pure(model, lambda m, x: m(x))
    # The top-k choice is locally constant; these inputs keep every margin > eps.
    util.check_grads_both(jax.jit(f), (params, x), eps=1e-4, atol=1e-5, rtol=1e-5)


def test_jit_vmap_and_optimizer():
  model = _model()
  xs = jnp.asarray(util.random_values(5, (3, T, F_IN), np.float32))
  y, aux = model(xs[0])
  y2, aux2 = nnx.jit(lambda m, x: m(x))(model, xs[0])
  util.assert_allclose(y2, y)
  util.assert_allclose(aux2, aux)
  ys, _ = jax.vmap(model)(xs)
  for k in range(3):
    util.assert_allclose(ys[k], model(xs[k])[0], err_msg=f"batch {k}")
  opt = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)
  target = jnp.ones((T, F_OUT))

  @nnx.jit
  def step(model, opt, x):
    def loss_fn(m):
      y, aux = m(x)
      return jnp.mean((y - target) ** 2) + 0.01 * aux
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(model, opt, xs[0])) for _ in range(25)]
  assert losses[-1] < 0.5 * losses[0], losses


def test_errors():
  with pytest.raises(TypeError, match="MoE: rngs is required"):
    nn.MoE(E, F_IN, F_OUT)
  with pytest.raises(ValueError, match="MoE: top_k must be at most num_experts; got top_k=5"):
    nn.MoE(E, F_IN, F_OUT, top_k=5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="MoE: unknown dispatch; got dispatch='dense'"):
    nn.MoE(E, F_IN, F_OUT, dispatch="dense", rngs=nnx.Rngs(0))
  model = _model()
  with pytest.raises(ValueError, match=r"MoE: wrong feature width: x.shape=\(6, 4\)"):
    model(jnp.ones((T, F_IN - 1)))



@pytest.mark.parametrize("top_k", [1, 2])
def test_grouped_dispatch_matches_reference(top_k):
  """``dispatch="grouped"`` (``ragged_dot`` over experts, run here on CPU) against the
  float64 reference, its gradients (order 2, fwd and rev) and ``vmap``."""
  with jax.enable_x64(True):
    model = _model(jnp.float64, top_k, seed=3, dispatch="grouped")
    x = jnp.asarray(util.random_values(4, (T, F_IN), np.float64))
    y, aux = model(x)
    y_ref, aux_ref, _ = moe_ref(np.asarray(x), lu.params_of(model), top_k)
    util.assert_allclose(y, y_ref, dtype=np.float64)
    util.assert_allclose(aux, aux_ref, dtype=np.float64)
    f, params = lu.pure(model, lambda m, x: m(x))
    util.check_grads_both(jax.jit(f), (params, x), eps=1e-4, atol=1e-5, rtol=1e-5)
    xs = jnp.stack([x, -x])
    ys, _ = jax.vmap(model)(xs)
    util.assert_allclose(ys[1], model(-x)[0], dtype=np.float64)


def _lowered(model, x, platform: str) -> str:
  step = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(model(x)[0]))))
  return step.trace(x).lower(lowering_platforms=(platform,)).as_text()


def test_auto_dispatch_is_grouped_on_accelerators_and_sparse_on_cpu():
  """Lowered on CPU for each platform, forward and backward: on ``cuda`` and ``tpu`` the
  experts run as XLA ragged dots (never a dense product over all experts, never the CPU
  kernels); on ``cpu`` as the sparse einsum's kernels, with no ragged dot (which CPU
  would expand densely)."""
  model = _model()
  x = jnp.asarray(util.random_values(2, (T, F_IN), np.float32))
  for platform in ("cuda", "tpu"):
    text = _lowered(model, x, platform)
    assert text.count("ragged_dot") >= 3, platform      # forward, d/dx, d/dkernel
    assert "jscorch" not in text, platform
  text = _lowered(model, x, "cpu")
  assert "ragged_dot" not in text and "custom_call @jscorch_k_" in text
