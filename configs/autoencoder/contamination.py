"""The NIB paper's contamination test (section 3.3, Figure 5): an autoencoder with a plain, an
additive-noise or a NIB first layer.

Usage: --config configs/autoencoder/contamination.py:nib        (the full size: an accelerator)
       --config configs/autoencoder/contamination.py:nib_demo   (a few minutes on 2 CPU cores)
Arguments: plain, noise, nib, each with or without _demo.
All three side by side: python -m noise_research.experiments.contamination --out DIR.
Every key, its default and its meaning: noise_research/tasks/autoencoder.py (the config sections).
"""

from noise_research.tasks import autoencoder


def get_config(arg: str | None = None):
    first_layer, demo = autoencoder.variant_from_arg(arg)
    return autoencoder.experiment_config(first_layer=first_layer, demo=demo)
