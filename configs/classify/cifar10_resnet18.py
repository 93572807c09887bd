"""CIFAR-10, ResNet-18 with the small stem.

``--config configs/classify/cifar10_resnet18.py[:sf|pow|hpow|sf_pow|dorefa|stability]``
"""

from configs.classify.common import (
    classify_config,
    quantizer_of,
    stability_finetune,
    variant_from_arg,
)


def get_config(arg: str | None = None):
    variant = variant_from_arg(arg)
    config = classify_config(
        dataset="cifar10",
        depth=18,
        stem="small",
        num_classes=10,
        image_size=32,
        quantizer=quantizer_of(variant),
    )
    config.train.num_steps = 39_000  # 200 epochs of 50 000 images at batch 256
    config.data.batch_size = 256
    config.optimizer.learning_rate = 0.1
    config.optimizer.weight_decay = 5e-4
    if variant == "stability":
        stability_finetune(config, num_steps=3_900)  # 20 epochs
    return config
