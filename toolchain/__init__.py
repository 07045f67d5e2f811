"""vst: sparse, certifiably robust neural networks for microcontrollers.

Heavy libraries (torch, tensorflow, onnxruntime) are imported only by the
pipeline stage that needs them, so ``vst --help`` stays fast.
"""

__version__ = "0.1.0"
