"""Serving a bundle: `inference` (PyTorch or ONNX Runtime predictors behind one interface, batched file
prediction), `export` (ONNX/TorchScript with a parity check) and `serve` (the web app, micro-batching, upload limits).
Every one of them reads the bundle's preprocessing contract and nothing else.

May import: the bottom modules, data and evaluation.
"""
