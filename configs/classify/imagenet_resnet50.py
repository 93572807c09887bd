"""ImageNet, ResNet-50, quantizers before the 3×3 convs (the paper's setting), bfloat16.

The model computes in bfloat16; its quantizing convs (quantizer + conv) compute in float32
(``model.quantizer.compute_dtype='float32'``, the default), so SF is ⌊100x⌋/100 on the exact
0.01 grid and POW uses its float32 exponents, as in the paper's float32 models. With
``--config.model.quantizer.compute_dtype=model`` they compute in bfloat16: SF then floors
nothing beyond x ≈ 1.28 (100x is already an integer after rounding) and POW's exponent α+1 is
rounded to steps of 2⁻⁷, so |α| < 0.004 is the identity (see noise_research/tasks/classify.py,
``QuantizerConfig``).

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
