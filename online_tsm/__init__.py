"""online-tsm: the online Temporal Shift Module for real-time video recognition on edge devices."""
from online_tsm.checkpoint import (CheckpointError, ModelInfo, OneWayShiftWarning, load_model, model_info,
                                   save_checkpoint)
from online_tsm.errors import OnlineTSMError
from online_tsm.labels import JESTER_LABELS
from online_tsm.models import DEFAULT_SHIFT_BLOCKS, MobileNetV2TSM
from online_tsm.preprocess import preprocess_frame

__version__ = "0.1.0"

__all__ = [
    "MobileNetV2TSM", "DEFAULT_SHIFT_BLOCKS", "load_model", "save_checkpoint", "model_info", "ModelInfo",
    "CheckpointError", "OnlineTSMError", "OneWayShiftWarning", "JESTER_LABELS", "preprocess_frame", "__version__",
]
