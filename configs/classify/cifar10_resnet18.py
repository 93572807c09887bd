"""CIFAR-10, ResNet-18 with the small stem.

``--config configs/classify/cifar10_resnet18.py[:sf|pow|hpow|sf_pow|dorefa|stability]``
Every key, its default and its meaning: noise_research/tasks/classify.py (the config sections).
"""

from noise_research.tasks import classify


def get_config(arg: str | None = None):
    config = classify.experiment_config(
        dataset="cifar10",
        depth=18,
        stem="small",
        num_classes=10,
        image_size=32,
        variant=classify.variant_from_arg(arg),
        num_steps=39_000,  # 200 epochs of 50 000 images at batch 256
        stability_steps=3_900,  # 20 epochs
    )
    config.optimizer.weight_decay = 5e-4
    return config
