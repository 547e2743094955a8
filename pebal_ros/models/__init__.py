"""Networks for PEBAL in plain PyTorch: WRN38 DeepLabV3+ (official PEBAL) and ESPNetv2 (EdgeNets).

Entry points::

    from pebal_ros.models import load_model, build_model, add_abstention, freeze_all_but_final
    model = load_model("espnetv2_s_2.0_city_1024x512.pth")   # arch and width inferred
    model = add_abstention(model)                              # channel 19 -> abstention
    freeze_all_but_final(model)                                # only model.final_block trains
    logits = model(images)                                     # [B, 20, H, W], input resolution

Inputs are ImageNet-normalised RGB ([0, 1] then mean/std), see ``IMAGENET_MEAN``/``IMAGENET_STD``.
"""
from .checkpoint import (CheckpointError, UnsafeCheckpointError, allow_unsafe_pickle, extract_state_dict,
                         infer_architecture, load_model, load_state_into, read_checkpoint, save_checkpoint)
from .pebal_head import (add_abstention, count_parameters, freeze_all_but_final, train_mode_final_only,
                         unfreeze_all)
from .registry import ARCHITECTURES, ESPNETV2_WIDTHS, PebalModel, build_model, unwrap

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "ARCHITECTURES", "ESPNETV2_WIDTHS", "IMAGENET_MEAN", "IMAGENET_STD", "CheckpointError", "PebalModel", "UnsafeCheckpointError",
    "allow_unsafe_pickle",
    "add_abstention", "build_model", "count_parameters", "extract_state_dict", "freeze_all_but_final",
    "infer_architecture", "load_model", "load_state_into", "read_checkpoint", "save_checkpoint",
    "train_mode_final_only", "unfreeze_all", "unwrap",
]
