"""DCGAN with no, Euclidean or Riemannian noise injection after each generator ReLU.

Usage: --config configs/gan/dcgan.py:riemannian          (DESIGN.md's DCGAN: batch 128, lr 2e-4)
       --config configs/gan/dcgan.py:riemannian_demo     (a 32² pair for 2 CPU cores)
Arguments: none, euclidean, riemannian, each with or without _demo.
Every key, its default and its meaning: noise_research/tasks/gan.py (the config sections).
"""

from noise_research.tasks import gan


def get_config(arg: str | None = None):
    injection, demo = gan.variant_from_arg(arg)
    return gan.experiment_config(injection=injection, demo=demo)
