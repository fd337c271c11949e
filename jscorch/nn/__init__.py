"""Flax NNX layers that take SparseArrays.

Every layer is an ``nnx.Module`` initialised from ``rngs`` like ``nnx.Linear``
(dense weights ``kernel`` `[in, out]` and ``bias`` `[out]`), works under
``nnx.jit`` / ``jax.jit``, ``jax.vmap`` and ``nnx.grad`` with SparseArray
arguments, and trains with ``nnx.Optimizer``. The sparse work is done by
``js.einsum`` (SpMM, SDDMM, gathers), so sparse inputs are never densified.
The graph layers (``GCNConv``, ``SAGEConv``, ``GINConv``, ``GATConv``) have one
forward each over :mod:`jscorch.nn.aggregation`, which a SparseArray and a
:class:`jscorch.distributed.ShardedSparseArray` adjacency both implement.
"""
from jscorch.nn.aggregation import GATAdjacency as GATAdjacency
from jscorch.nn.aggregation import GCNAdjacency as GCNAdjacency
from jscorch.nn.aggregation import gat_adjacency as gat_adjacency
from jscorch.nn.aggregation import gcn_adjacency as gcn_adjacency
from jscorch.nn.attention import GATConv as GATConv
from jscorch.nn.attention import SparseAttention as SparseAttention
from jscorch.nn.attention import bigbird_mask as bigbird_mask
from jscorch.nn.attention import local_window_mask as local_window_mask
from jscorch.nn.attention import strided_mask as strided_mask
from jscorch.nn.dropout import SparseDropout as SparseDropout
from jscorch.nn.embedding import EmbeddingBag as EmbeddingBag
from jscorch.nn.graph_conv import GCNConv as GCNConv
from jscorch.nn.graph_conv import GINConv as GINConv
from jscorch.nn.graph_conv import SAGEConv as SAGEConv
from jscorch.nn.linear import SparseLinear as SparseLinear
from jscorch.nn.linear import SparsePattern as SparsePattern
from jscorch.nn.moe import MoE as MoE

__all__ = [
    "EmbeddingBag", "GATAdjacency", "GATConv", "GCNAdjacency", "GCNConv", "GINConv", "MoE",
    "SAGEConv", "SparseAttention", "SparseDropout", "SparseLinear", "SparsePattern",
    "bigbird_mask", "gat_adjacency", "gcn_adjacency", "local_window_mask", "strided_mask",
]
