"""Sparsity: channel groups, layer-wise budget (ERK), masks and the DST update."""
