"""The main job: a NIB halftoning ResNet on procedural comics, a few minutes on 2 CPU cores.

Its plain twin (same budget and seed) is ``configs/halftone/plain_resnet.py:demo``.
"""

from noise_research.tasks import halftone


def get_config():
    return halftone.experiment_config(model="resnet", first_layer="nib", demo=True)
