"""Tests of the layers' parameter initialisation (``nn._util.draw``): the values of the
initialisers called eagerly in turn, drawn in one XLA program per layer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import util
from jscorch import nn
from jscorch.nn import _util

GLOROT = nnx.initializers.glorot_uniform()
ZEROS = nnx.initializers.zeros_init()
NORMAL = nnx.initializers.normal(1.0)


def _eager(seed, *specs):
  """Each ``(init, shape)`` called eagerly with the next key of ``nnx.Rngs(seed)``."""
  rngs = nnx.Rngs(seed)
  return [np.asarray(init(rngs.params(), shape, jnp.float32)) for init, shape in specs]


# (layer, its parameters in drawing order, the (init, shape) of each)
LAYERS = [
    (lambda r: nn.GCNConv(11, 6, rngs=r), ("kernel", "bias"), [(GLOROT, (11, 6)), (ZEROS, (6,))]),
    (lambda r: nn.SAGEConv(11, 6, kernel_init=GLOROT, rngs=r), ("kernel", "root_kernel", "bias"),
     [(GLOROT, (11, 6)), (GLOROT, (11, 6)), (ZEROS, (6,))]),
    (lambda r: nn.GATConv(11, 5, num_heads=3, rngs=r), ("kernel", "att_src", "att_dst", "bias"),
     [(GLOROT, (11, 15)), (GLOROT, (3, 5)), (GLOROT, (3, 5)), (ZEROS, (15,))]),
    (lambda r: nn.EmbeddingBag(13, 4, embedding_init=NORMAL, rngs=r), ("embedding",),
     [(NORMAL, (13, 4))]),
]


@pytest.mark.parametrize("make, names, specs", LAYERS, ids=["gcn", "sage", "gat", "embedding"])
def test_parameters_are_the_eager_initialisers_values(make, names, specs):
  layer = make(nnx.Rngs(3))
  for name, expected in zip(names, _eager(3, *specs)):
    np.testing.assert_array_equal(np.asarray(getattr(layer, name)[...]), expected, err_msg=name)


def test_options_that_drop_a_parameter_draw_no_key_for_it():
  layer = nn.SAGEConv(11, 6, root_weight=False, use_bias=False, kernel_init=GLOROT,
                      rngs=nnx.Rngs(4))
  assert layer.root_kernel is None and layer.bias is None
  np.testing.assert_array_equal(np.asarray(layer.kernel[...]), _eager(4, (GLOROT, (11, 6)))[0])
  rngs = nnx.Rngs(4)
  nn.SAGEConv(11, 6, root_weight=False, use_bias=False, kernel_init=GLOROT, rngs=rngs)
  np.testing.assert_array_equal(jax.random.key_data(rngs.params()),
                                jax.random.key_data(_keys_after(4, 1)))


def _keys_after(seed, drawn):
  rngs = nnx.Rngs(seed)
  for _ in range(drawn):
    rngs.params()
  return rngs.params()


def test_one_program_per_layer():
  rngs = nnx.Rngs(5)
  rngs.params()                      # the key's own programs, once per process
  with util.count_lowerings() as lowered:
    nn.GATConv(53, 7, num_heads=3, rngs=rngs)      # shapes no other test uses
  assert lowered[0] == 1


def test_unhashable_initialiser_runs_eagerly():
  class Scaled:                      # a callable with __eq__ and no __hash__
    __hash__ = None

    def __eq__(self, other):
      return isinstance(other, Scaled)

    def __call__(self, key, shape, dtype):
      return 2 * GLOROT(key, shape, dtype)

  kernel, bias = _util.draw(nnx.Rngs(6), (Scaled(), (4, 3), jnp.float32), None)
  assert bias is None
  np.testing.assert_allclose(kernel, 2 * _eager(6, (GLOROT, (4, 3)))[0], rtol=1e-6)


def test_abstract_initialisation():
  layer = nnx.eval_shape(lambda: nn.GCNConv(9, 4, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
  kernel = layer.kernel.get_value()
  assert isinstance(kernel, jax.ShapeDtypeStruct)
  assert kernel.shape == (9, 4) and kernel.dtype == jnp.bfloat16
