"""Halftoning, unet with a Noise Incentive Block as its first layer.

Usage: --config configs/halftone/nib_unet.py          (the paper's sizes)
       --config configs/halftone/nib_unet.py:demo     (sized for 2 CPU cores)
Every key, its default and its meaning: noise_research/tasks/halftone.py (the config sections).
"""

from noise_research.tasks import halftone


def get_config(arg: str | None = None):
    return halftone.experiment_config(
        model="unet", first_layer="nib", demo=halftone.demo_from_arg(arg)
    )
