"""The simplified ONNX graph of a model, and the verified graphs this process has already made.

Exporting one model for several targets in one process (a script, the test
suite, ``tsm-bench``) would otherwise repeat ``torch.onnx.export``, onnxslim
and the parity check, tens of seconds each time.
"""
from __future__ import annotations


import numpy as np
import torch

from online_tsm.manifest import Manifest


#: graph key -> (the graph's bytes, PyTorch's reference logits, the verified max abs diff); at most four kept
VERIFIED_GRAPHS: dict[str, tuple[bytes, np.ndarray, float]] = {}


def graph_key(graph_model: torch.nn.Module, opset: int | None, manifest: Manifest) -> str:
    """Fingerprint of everything the ONNX graph depends on: weights, shapes, pre-processing, opset."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for name, tensor in graph_model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps([opset, manifest.preprocess, [s.shape for s in manifest.inputs],
                              [s.shape for s in manifest.outputs]], sort_keys=True, default=str).encode())
    return digest.hexdigest()
