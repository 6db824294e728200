"""Model architectures of online-tsm."""
from online_tsm.models.mobilenet_v2 import DEFAULT_SHIFT_BLOCKS, MobileNetV2TSM
from online_tsm.models.seeded import seeded_model

__all__ = ["MobileNetV2TSM", "DEFAULT_SHIFT_BLOCKS", "seeded_model"]
