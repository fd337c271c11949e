"""Flax NNX layers taking SparseArrays (see issue: sparse models)."""
__all__: list[str] = []
