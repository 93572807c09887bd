"""Deep neural dithering (the NIB paper's section 4.3, Table 4): a NIB halftoning ResNet trained on
tone + the structure (SSIM) term of Pang et al. 2008, with or without the blue-noise loss L_B.

Usage: --config configs/halftone/dithering.py:blue_noise          (with L_B, the paper's sizes)
       --config configs/halftone/dithering.py:no_blue_noise       (without L_B)
       --config configs/halftone/dithering.py:blue_noise_demo     (sized for 2 CPU cores)
Arguments: blue_noise, no_blue_noise, each with or without _demo.
The comparison with the classical halftoners: python -m noise_research.experiments.dithering.
Every key, its default and its meaning: noise_research/tasks/halftone.py (the config sections).
"""

from noise_research.tasks import halftone


def get_config(arg: str | None = None):
    blue_noise, demo = halftone.dithering_variant_from_arg(arg)
    return halftone.dithering_config(blue_noise=blue_noise, demo=demo)
