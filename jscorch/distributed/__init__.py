"""Sharded sparse arrays on JAX's own SPMD machinery (``Mesh``, ``shard_map``, collectives).

``shard(A, mesh, axis=...)`` partitions a sparse matrix over a device mesh — rows
(1-D) balanced by nonzeros, or rows × columns (2-D) — and the products below run
one ``jax.shard_map`` each, with the communication stated in their docstrings.
Works under ``jit`` and ``grad``, with either einsum lowering, and across
processes under ``jax.distributed.initialize``. See ``docs/distributed.md``.

Example:
  >>> import jax, jax.numpy as jnp, jscorch as js
  >>> from jscorch import distributed as jsd
  >>> mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
  >>> A = jsd.shard(js.from_dense(jnp.array([[0., 2.], [3., 0.]])), mesh, axis="x")
  >>> A.unshard_rows(jsd.spmm(A, A.shard_cols(jnp.ones((2, 1)))))
  Array([[2.],
         [3.]], dtype=float32)
"""
from jscorch.distributed._errors import SparseShardingError as SparseShardingError
from jscorch.distributed.attention import gat_aggregate as gat_aggregate
from jscorch.distributed.layers import apply as apply
from jscorch.distributed.partition import Partition as Partition
from jscorch.distributed.products import comm_bytes as comm_bytes
from jscorch.distributed.products import gcn_aggregate as gcn_aggregate
from jscorch.distributed.products import row_sum as row_sum
from jscorch.distributed.products import sddmm as sddmm
from jscorch.distributed.products import spmm as spmm
from jscorch.distributed.sharded import EXCHANGES as EXCHANGES
from jscorch.distributed.sharded import ShardedSparseArray as ShardedSparseArray
from jscorch.distributed.sharded import ShardLayout as ShardLayout
from jscorch.distributed.sharded import is_sharded as is_sharded
from jscorch.distributed.sharded import shard as shard
from jscorch.distributed.sharded import unshard as unshard

__all__ = [
    "EXCHANGES", "Partition", "ShardLayout", "ShardedSparseArray", "SparseShardingError",
    "apply", "comm_bytes", "gat_aggregate", "gcn_aggregate", "is_sharded", "row_sum",
    "sddmm", "shard", "spmm", "unshard",
]
