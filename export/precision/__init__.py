"""Reduced precision: which precisions a row takes, int8 quantization and calibration, measured agreement."""
