"""ImageNet, ResNet-50, quantizers before the 3×3 convs (the paper's setting).

``--config configs/classify/imagenet_resnet50.py[:sf|pow|hpow|sf_pow|dorefa|stability]``
Every key, its default and its meaning: noise_research/tasks/classify.py (the config sections).
"""

from noise_research.tasks import classify


def get_config(arg: str | None = None):
    config = classify.experiment_config(
        dataset="imagenet2012",
        depth=50,
        stem="imagenet",
        num_classes=1000,
        image_size=224,
        variant=classify.variant_from_arg(arg),
        num_steps=450_450,  # 90 epochs of 1 281 167 images at batch 256
        stability_steps=25_000,  # about 5 epochs
        warmup_steps=25_000,  # 5 epochs
    )
    config.data.eval_split = "validation"
    config.train.eval_every = 25_000
    config.model.dtype = "bfloat16"
    return config
