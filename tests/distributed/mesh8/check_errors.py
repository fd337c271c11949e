"""Bad input to ``jscorch.distributed`` raises clear errors (8 simulated devices)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jscorch as js
from jscorch import distributed as jsd
from jscorch import nn

Err = jsd.SparseShardingError


@pytest.fixture(scope="module")
def setup(meshes, matrices):
  mesh, axis = meshes["1d"]
  m = matrices["uniform"]
  A = js.from_scipy(m)
  return mesh, A, jsd.shard(A, mesh, axis=axis), m


def test_operand_on_another_mesh(setup):
  mesh, A, As, m = setup
  other = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Auto,), devices=jax.devices()[4:])
  x = jax.device_put(jnp.ones((m.shape[0], 2)), NamedSharding(other, P("x")))
  with pytest.raises(Err, match=r"spmm: x is sharded incompatibly; got an array on mesh "
                                r"\{'x': 4\}, expected one on the sparse array's mesh"):
    jsd.spmm(As, x)


def test_operand_sharded_another_way(setup):
  mesh, A, As, m = setup
  x = jax.device_put(jnp.ones((As.layout.cols.padded, 8)), NamedSharding(mesh, P(None, "x")))
  with pytest.raises(Err, match=r"x is sharded incompatibly; got spec P\(None, 'x'\).*"
                                r"expected P\('x',\)"):
    jsd.spmm(As, x, exchange="allgather")


def test_operand_rows_neither_global_nor_node_layout(setup):
  """Shapes that a mesh axis does not divide are padded by shard/shard_cols; others fail."""
  mesh, A, As, m = setup
  assert m.shape[0] % 8 != 0                    # 300 rows over 8 devices: shard pads
  padded = As.layout.cols.padded
  with pytest.raises(Err, match=rf"x has 296 rows; expected 300 \(the global array\) or "
                                rf"{padded} \(node layout.*shard it with A.shard_cols"):
    jsd.spmm(As, jnp.ones((296, 2)))
  with pytest.raises(Err, match=r"unshard_rows: expected an array in node layout"):
    As.unshard_rows(jnp.ones((300, 2)) if padded != 300 else jnp.ones((299, 2)))


def test_more_devices_than_rows_and_matvec(meshes):
  mesh, axis = meshes["1d"]
  x = np.diag(np.arange(1.0, 6.0)).astype(np.float32)
  As = jsd.shard(sp.csr_array(x), mesh, axis=axis)
  np.testing.assert_array_equal(As.unshard().to_scipy().toarray(), x)
  y = As @ np.ones(5, np.float32)                     # SpMV: global rows in and out
  assert y.shape == (5,)
  np.testing.assert_array_equal(np.asarray(y), x.sum(1))
  y = As.spmm(np.ones(5, np.float32))                 # node layout (8 padded rows)
  assert y.shape == (As.layout.rows.padded,)
  np.testing.assert_array_equal(np.asarray(As.unshard_rows(y)), x.sum(1))
  with pytest.raises(Err, match=r"ShardedSparseArray @: x must be a global array .* got "
                                r"x.shape=\(8,\), expected \(5, ...\).*use A.spmm\(x\)"):
    As @ As.shard_cols(np.ones(5, np.float32))


def test_exchange_choices(meshes, matrices, setup):
  mesh2, axes2 = meshes["2d"]
  A = setup[1]
  A2 = jsd.shard(A, mesh2, axis=axes2)
  with pytest.raises(Err, match=r"2-D sharded matrix .* got exchange='halo', expected "
                                r"'allgather'"):
    jsd.spmm(A2, jnp.ones((300, 2)), exchange="halo")
  no_halo = jsd.shard(A, *meshes["1d"], halo=False)
  with pytest.raises(Err, match=r"exchange='halo' needs the halo plan"):
    jsd.spmm(no_halo, jnp.ones((300, 2)), exchange="halo")
  with pytest.raises(Err, match=r"exchange must be one of \('replicated', 'allgather', "
                                r"'halo'\); got 'ring'"):
    jsd.spmm(setup[2], jnp.ones((300, 2)), exchange="ring")


def test_inside_shard_map(setup):
  mesh, A, As, m = setup

  def body(x):
    return jsd.spmm(As, x)

  with pytest.raises(Err, match=r"called inside jax.shard_map over mesh axes \['x'\]"):
    jax.shard_map(body, mesh=mesh, in_specs=P("x"), out_specs=P("x"))(jnp.ones((304, 2)))


def test_inside_another_mesh_context(setup):
  mesh, A, As, m = setup
  other = jax.make_mesh((2, 4), ("a", "b"))
  with jax.set_mesh(other):
    with pytest.raises(Err, match=r"inside the context of another mesh; got the context "
                                  r"\{'a': 2, 'b': 4\}, expected the array's mesh \{'x': 8\}"):
      jsd.spmm(As, jnp.ones((300, 2)))


def test_outside_explicit_mesh_context(matrices):
  mesh = jax.make_mesh((8,), ("x",))            # Explicit axes (jax.make_mesh's default)
  As = jsd.shard(js.from_scipy(matrices["uniform"]), mesh, axis="x")
  for call in (lambda: jsd.spmm(As, jnp.ones((300, 2))), lambda: jsd.row_sum(As),
               lambda: As.shard_rows(np.ones(300))):
    with pytest.raises(Err, match=r"called outside the mesh context; got a mesh with Explicit "
                                  r"axes \{'x': 8\}.*with jax.set_mesh\(mesh\)"):
      call()


def test_shard_arguments(setup, meshes, matrices):
  mesh, A, As, m = setup
  with pytest.raises(Err, match=r"shard: the partition depends on the sparsity pattern, "
                                r"which must be concrete; got traced buffers"):
    jax.jit(lambda a: jsd.shard(a, mesh, axis="x").data)(A)
  with pytest.raises(Err, match=r"axis must name one mesh axis .* got axis='y', expected "
                                r"names from the mesh axes \('x',\)"):
    jsd.shard(A, mesh, axis="y")
  with pytest.raises(Err, match=r"got axis=\('r', 'c', 'r'\)"):
    jsd.shard(A, meshes["2d"][0], axis=("r", "c", "r"))
  with pytest.raises(Err, match=r"shard: no mesh; got mesh=None outside any mesh context"):
    jsd.shard(A, axis="x")
  with pytest.raises(Err, match=r"expected a 2-D matrix without batch or block dimensions"):
    batched = js.SparseArray.from_buffers(
        np.ones((2, 1), np.float32), [np.zeros((2, 5), np.int32), np.zeros((2, 1), np.int32)],
        shape=(2, 4, 4), format=js.CSR.replace(n_batch=1), check=False)
    jsd.shard(batched, mesh, axis="x")
  with pytest.raises(Err, match=r"expected a jscorch SparseArray or a scipy.sparse matrix; "
                                r"got ndarray"):
    jsd.shard(np.eye(3), mesh, axis="x")
  with pytest.raises(Err, match=r"reorder relabels the nodes of a square matrix; got shape "
                                r"\(300, 200\)"):
    jsd.shard(js.from_scipy(matrices["rect"]), mesh, axis="x", reorder="degree")
  with pytest.raises(Err, match=r"reorder must be a permutation of range\(300\)"):
    jsd.shard(A, mesh, axis="x", reorder=np.zeros(300, int))
  with pytest.raises(Err, match=r"balance must be 'nnz' or 'rows'; got 'cols'"):
    jsd.shard(A, mesh, axis="x", balance="cols")


def test_operand_kinds(setup, matrices):
  mesh, A, As, m = setup
  with pytest.raises(Err, match=r"spmm: x must be a dense array; got SparseArray"):
    jsd.spmm(As, A)
  with pytest.raises(Err, match=r"spmm: expected a ShardedSparseArray .*; got SparseArray"):
    jsd.spmm(A, jnp.ones((300, 2)))
  with pytest.raises(Err, match=r"u and v must be 2-D with the same width; got "
                                r"u.shape=\(300, 2\), v.shape=\(300, 3\)"):
    jsd.sddmm(As, jnp.ones((300, 2)), jnp.ones((300, 3)))
  rect = jsd.shard(js.from_scipy(matrices["rect"]), mesh, axis="x")
  with pytest.raises(Err, match=r"gcn_aggregate: expected a square adjacency"):
    jsd.gcn_aggregate(rect, jnp.ones((300, 2)))
  with pytest.raises(Err, match=r"gat_aggregate: expected a square adjacency"):
    jsd.gat_aggregate(rect, jnp.ones((300, 2, 1)), jnp.ones((300, 2)), jnp.ones((300, 2)))
  with pytest.raises(ValueError, match=r"x must be \[num_nodes, in_features=4\]; got "
                                       r"x.shape=\(300, 2\)"):
    jsd.apply(nn.GCNConv(4, 2, rngs=nnx.Rngs(0)), As, jnp.ones((300, 2)))


def test_gat_aggregate_inputs(setup):
  """Global-layout or misshapen inputs name gat_aggregate, the operand and the shapes
  (before: a message about exchange='replicated', which the caller never passed, or raw
  numpy errors)."""
  mesh, A, As, m = setup
  n, rows = m.shape[0], As.layout.cols.padded
  z, a = np.ones((n, 2, 3), np.float32), np.ones((n, 2), np.float32)
  zn, an = As.shard_rows(z), As.shard_rows(a)
  with pytest.raises(Err, match=rf"gat_aggregate: z, a_src and a_dst must be in node layout "
                                rf"\({rows} rows\); got {n} rows"):
    jsd.gat_aggregate(As, z, a, a)
  with pytest.raises(Err, match=rf"gat_aggregate: a_src must be \[nodes, heads\] = "
                                rf"\({rows}, 2\), matching z; got shape \({n}, 2\)"):
    jsd.gat_aggregate(As, zn, a, an)
  with pytest.raises(Err, match=r"gat_aggregate: a_dst must be .* got shape \(\d+, 1\)"):
    jsd.gat_aggregate(As, zn, an, an[:, :1])
  with pytest.raises(Err, match=r"gat_aggregate: z must be \[nodes, heads, F\]"):
    jsd.gat_aggregate(As, zn[:, 0], an, an)


def test_with_data_checks_the_shape(setup):
  """Values of another shape (the unsharded array's, or flattened) are refused by name
  (before: a shard_map divisibility or reshape error at the next product)."""
  mesh, A, As, m = setup
  for bad in (A.data, As.data.reshape(-1)):
    with pytest.raises(Err, match=r"with_data: data must have the shape of A.data, "
                                  + re.escape(str(As.data.shape))):
      As.with_data(bad)
  np.testing.assert_allclose(As.with_data(2 * As.data).unshard().todense(), 2 * m.toarray())


def test_comm_bytes_checks_the_exchange(meshes, setup):
  """``comm_bytes`` refuses what ``spmm`` refuses (before: a 2-D matrix ignored the
  exchange, and 'halo' without the halo plan counted 0 bytes)."""
  mesh, A, As, m = setup
  A2 = jsd.shard(A, *meshes["2d"])
  assert jsd.comm_bytes(A2, None, 4) == jsd.comm_bytes(A2, "allgather", 4) > 0
  for exchange in ("halo", "replicated"):
    with pytest.raises(Err, match=rf"comm_bytes: a 2-D sharded matrix .* got "
                                  rf"exchange='{exchange}', expected 'allgather'"):
      jsd.comm_bytes(A2, exchange, 4)
  with pytest.raises(Err, match=r"comm_bytes: exchange='halo' needs the halo plan"):
    jsd.comm_bytes(jsd.shard(A, mesh, axis="x", halo=False), "halo", 4)
  with pytest.raises(Err, match=r"comm_bytes: exchange must be one of .*; got 'ring'"):
    jsd.comm_bytes(As, "ring", 4)


def test_rmatmul_checks_the_shape(setup):
  mesh, A, As, m = setup
  for bad in (np.ones((2, 299)), np.ones(299), np.ones((2, 2, 300))):
    with pytest.raises(Err, match=r"x @ A\): x must be \[n_rows\] or \[m, n_rows\] .* got "
                                  rf"x.shape={re.escape(str(bad.shape))}"):
      bad @ As
