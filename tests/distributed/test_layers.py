"""``jscorch.nn`` graph layers given a sharded adjacency.

Values and gradients against the unsharded layers run on 8 simulated devices in a
child process (``mesh8/check_layers.py``, see ``test_shard.run_child``); the errors
that need no devices are checked here, on a one-device mesh.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType

import jscorch as js
from jscorch import distributed as jsd
from jscorch import graph, nn
from test_shard import run_child


@pytest.mark.slow
def test_on_8_devices():
  """Runs ``mesh8/check_layers.py`` (layers, the example, Explicit meshes) on 8 devices."""
  proc = run_child("check_layers.py")
  tail = (proc.stdout[-12000:] + "\n" + proc.stderr[-4000:]).strip()
  assert proc.returncode == 0, tail
  assert " passed" in proc.stdout and "skipped" not in proc.stdout.split("\n")[-2], tail


@pytest.fixture(scope="module")
def sharded():
  mesh = jax.make_mesh((1,), ("x",), axis_types=(AxisType.Auto,))
  adj = graph.from_edge_index(np.array([[0, 1, 1, 2], [1, 0, 2, 1]]), num_nodes=3)
  return jsd.shard(adj, mesh, axis="x")


def test_gat_sharded_errors(sharded):
  gat = nn.GATConv(4, 2, num_heads=2, dropout=0.5, rngs=nnx.Rngs(0))
  x = jnp.ones((3, 4))
  with pytest.raises(jsd.SparseShardingError,
                     match=r"GATConv.attention: the attention weights of a sharded adjacency "
                           r"are not available; got a ShardedSparseArray, expected a "
                           r"SparseArray. Call the layer itself"):
    gat.attention(sharded, x)
  dropout = (r"GATConv: attention dropout is not supported with a sharded adjacency; "
             r"got dropout rate 0.5 in training mode, expected it inactive. Pass "
             r"deterministic=True \(or call model.eval\(\)\)")
  for call in (lambda: gat(sharded, x), lambda: jsd.apply(gat, sharded, x)):
    with pytest.raises(jsd.SparseShardingError, match=dropout):
      call()
  with pytest.raises(jsd.SparseShardingError,
                     match=r"gat_aggregate: node features stay in node layout here; got "
                           r"exchange='replicated', expected 'allgather', 'halo' or None"):
    jsd.apply(gat, sharded, x, exchange="replicated", deterministic=True)
  with pytest.raises(jsd.SparseShardingError,
                     match=r"apply: supported layers are jscorch.nn.GCNConv, SAGEConv, GINConv "
                           r"and GATConv; got Linear. Call other layers with the unsharded "
                           r"adjacency \(A.unshard\(\)\)"):
    jsd.apply(nnx.Linear(4, 2, rngs=nnx.Rngs(0)), sharded, x)


@pytest.mark.parametrize("layer", ["GCNConv", "SAGEConv", "GINConv", "GATConv"])
def test_layer_input_errors_with_a_sharded_adjacency(sharded, layer):
  conv = getattr(nn, layer)(4, 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=rf"{layer}: x must be \[num_nodes, in_features=4\]; "
                                       r"got x.shape=\(3, 5\)"):
    conv(sharded, jnp.ones((3, 5)))
  with pytest.raises(jsd.SparseShardingError, match=r"x must be a dense array; got "
                                                    r"SparseArray"):
    conv(sharded, js.from_dense(jnp.eye(3, 4)))
  with pytest.raises(jsd.SparseShardingError, match=r"x has 2 rows; expected 3 \(the global "
                                                    r"array\)"):
    conv(sharded, jnp.ones((2, 4)))
