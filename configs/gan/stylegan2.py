"""StyleGAN2 (config E, 128², as the gan-noise-injection paper) with no, Euclidean (StyleGAN2's own)
or Riemannian noise injection.

Usage: --config configs/gan/stylegan2.py:riemannian        (lsun/church_outdoor 128², batch 32)
       --config configs/gan/stylegan2.py:riemannian_demo   (32² on the embedded shapes, 2 CPU cores)
Arguments: none, euclidean (the default), riemannian, each with or without _demo. The data set
is prepared offline (README, "Real data"); --config.data.name=celeb_a etc. switches it.
Every key, its default and its meaning: noise_research/tasks/gan.py (the config sections).
"""

from noise_research.tasks import gan


def get_config(arg: str | None = None):
    injection, demo = gan.variant_from_arg(arg, default="euclidean")
    return gan.experiment_config(architecture="stylegan2", injection=injection, demo=demo)
