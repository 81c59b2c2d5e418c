"""UnSAMv2 model on upstream ``sam2``: granularity module, LoRA, decoding, checkpoints."""

from unsamv2_engine.model.build import ModelInfo, UnSAMv2Model, build_model, is_added_parameter
from unsamv2_engine.model.specs import SIZES, detect_size, normalise_size

__all__ = ["SIZES", "ModelInfo", "UnSAMv2Model", "build_model", "detect_size", "is_added_parameter",
           "normalise_size"]
