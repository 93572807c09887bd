"""Colour hiding in grayscale: the invertible grayscale of Xia et al. 2018, with or without a Noise
Incentive Block as the encoder's first layer (the NIB paper's section 4.2, Table 3).

Usage: --config configs/colour_hiding/invertible_grayscale.py:nib          (the authors' sizes)
       --config configs/colour_hiding/invertible_grayscale.py:plain_demo   (sized for 2 CPU cores)
Arguments: plain, nib, plain_demo, nib_demo (nothing: nib).
Every key, its default and its meaning: noise_research/tasks/colour_hiding.py (the config sections).
"""

from noise_research.tasks import colour_hiding


def get_config(arg: str | None = None):
    first_layer, demo = colour_hiding.variant_from_arg(arg)
    return colour_hiding.experiment_config(first_layer=first_layer, demo=demo)
