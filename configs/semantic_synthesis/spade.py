"""Semantic synthesis (NIB paper, section 4.1, Table 2): a SPADE-style generator, plain or NIB.

Usage: --config configs/semantic_synthesis/spade.py:nib          (the paper's recipe at 256²)
       --config configs/semantic_synthesis/spade.py:plain_demo   (32², sized for 2 CPU cores)
Arguments: plain, nib, plain_demo, nib_demo.
Every key, its default and its meaning: noise_research/tasks/semantic_synthesis.py.
"""

from noise_research.tasks import semantic_synthesis


def get_config(arg: str | None = None):
    first_layer, demo = semantic_synthesis.variant_from_arg(arg)
    return semantic_synthesis.experiment_config(
        architecture="spade", first_layer=first_layer, demo=demo
    )
