"""Halftoning, unet with a plain convolution as its first layer.

Usage: --config configs/halftone/plain_unet.py          (the paper's sizes)
       --config configs/halftone/plain_unet.py:demo     (sized for 2 CPU cores)
Every key, its default and its meaning: noise_research/tasks/halftone.py (the config sections).
"""

from noise_research.tasks import halftone


def get_config(arg: str | None = None):
    return halftone.experiment_config(
        model="unet", first_layer="conv", demo=halftone.demo_from_arg(arg)
    )
