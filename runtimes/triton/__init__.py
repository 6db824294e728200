"""Triton Inference Server: the backend that streams to it, the python model it serves, and ``tsm-serve``."""
