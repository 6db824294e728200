"""Model architectures of online-tsm."""
from online_tsm.models.mobilenet_v2 import DEFAULT_SHIFT_BLOCKS, MobileNetV2TSM

__all__ = ["MobileNetV2TSM", "DEFAULT_SHIFT_BLOCKS"]
