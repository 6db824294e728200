"""Reduced precision: int8 calibration, quantization and its measured agreement with float32."""
