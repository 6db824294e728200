"""Artifact formats: ONNX (plain, TensorRT-ready, pre-processing folded in) and serving layouts (Triton)."""
