"""ImageNet, ResNet-50, quantizers before the 3×3 convs (the paper's setting).

``--config configs/classify/imagenet_resnet50.py[:sf|pow|hpow|sf_pow|dorefa|stability]``
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
        dataset="imagenet2012",
        depth=50,
        stem="imagenet",
        num_classes=1000,
        image_size=224,
        quantizer=quantizer_of(variant),
    )
    config.data.eval_split = "validation"
    config.train.num_steps = 450_450  # 90 epochs of 1 281 167 images at batch 256
    config.train.eval_every = 25_000
    config.model.dtype = "bfloat16"
    config.optimizer.warmup_steps = 25_000  # 5 epochs
    if variant == "stability":
        stability_finetune(config, num_steps=25_000)  # about 5 epochs
    return config
