"""The main job: a NIB halftoning ResNet on procedural comics, a few minutes on 2 CPU cores.

Its plain twin (same budget and seed) is ``configs/halftone/plain_resnet.py:demo``.
"""

from configs.halftone.common import halftone_config


def get_config():
    return halftone_config(model="resnet", first_layer="nib", demo=True)
