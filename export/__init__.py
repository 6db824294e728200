"""Export of the per-frame online TSM (ONNX, TVM) -- ``online_tsm.export``."""
