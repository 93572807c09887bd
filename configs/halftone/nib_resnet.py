"""Halftoning, resnet with a Noise Incentive Block as its first layer.

Usage: --config configs/halftone/nib_resnet.py          (the paper's sizes)
       --config configs/halftone/nib_resnet.py:demo     (sized for 2 CPU cores)
"""

from configs.halftone.common import halftone_config, is_demo


def get_config(arg: str | None = None):
    return halftone_config(model="resnet", first_layer="nib", demo=is_demo(arg))
