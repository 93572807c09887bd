"""Halftoning, unet with a plain convolution as its first layer.

Usage: --config configs/halftone/plain_unet.py          (the paper's sizes)
       --config configs/halftone/plain_unet.py:demo     (sized for 2 CPU cores)
"""

from configs.halftone.common import halftone_config, is_demo


def get_config(arg: str | None = None):
    return halftone_config(model="unet", first_layer="conv", demo=is_demo(arg))
