"""Training stage: VeriSparse certified sparse training and its baselines."""
