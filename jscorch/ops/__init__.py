"""The operations on SparseArrays, one family per module.

* :mod:`~jscorch.ops.products` — ``matmul``, ``dot``, ``multiply``, ``divide``;
* :mod:`~jscorch.ops.elementwise` — ``add``, ``subtract``, ``maximum``, ``minimum``, ``power``
  and ``union_values``;
* :mod:`~jscorch.ops.unary` — the zero-preserving elementwise functions (``sin``, ``relu``, ...);
* :mod:`~jscorch.ops.reduce` — ``sum``, ``max``, ``min``, ``mean``, ``count_nonzero``,
  ``segment_max``, ``segment_min``;
* :mod:`~jscorch.ops.shape` — ``reshape``, ``transpose``, ``expand_dims``, ``squeeze``,
  ``broadcast_to``, ``stack``, ``concatenate``;
* :mod:`~jscorch.ops.index` — ``A[key]`` and the slices behind it;
* :mod:`~jscorch.ops.coalesce` — ``sum_duplicates``, ``sort_indices``, ``eliminate_zeros``;
* :mod:`~jscorch.ops.layout` — ``asformat``, ``update_layout``, ``todense``;
* :mod:`~jscorch.ops.triangular` — ``tril``, ``triu``, ``diagonal``, ``diag``;
* :mod:`~jscorch.ops.softmax`, :mod:`~jscorch.ops.dropout`.

The public functions are re-exported as ``jscorch.<name>`` (and ``jscorch.numpy.<name>``);
this package itself exports nothing, so importing one module does not import the others.
"""
