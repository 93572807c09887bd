"""The embedded default: ResNet-18 (small stem, width 16) on scikit-learn digits upscaled to 16².

Reaches 94–97% test accuracy (seeds 0–3) in half a minute on 2 CPU cores, with any quantizer:
    --config configs/classify/digits.py          plain convolutions
    --config configs/classify/digits.py:pow      POW (sf, pow, hpow, sf_pow, dorefa likewise)
    --config configs/classify/digits.py:stability --config.finetune.init_workdir=RUN
                                                 the stability-training baseline: fine-tunes
                                                 RUN's classifier (RUN: a plain digits run)
DoReFa trains with AdamW (lr 1e-2), the others with SGD + Nesterov momentum (lr 0.1).
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
        dataset="digits",
        depth=18,
        stem="small",
        num_classes=10,
        image_size=16,
        quantizer=quantizer_of(variant),
    )
    config.train.num_steps = 200
    config.train.log_every = 25
    config.train.eval_every = 100
    config.train.checkpoint_every = 100
    config.data.batch_size = 64
    config.data.eval_batch_size = 100
    config.model.width = 16
    config.optimizer.learning_rate = 0.1
    config.optimizer.warmup_steps = 30
    config.loss.label_smoothing = 0.0
    if variant == "dorefa":
        # 1-bit weights flip sign only after large steps of their latent values: DoReFa-Net trains
        # with Adam, and SGD at lr 0.1 stays near chance for the first few hundred steps here.
        config.optimizer.name = "adamw"
        config.optimizer.learning_rate = 1e-2
    if variant == "stability":
        stability_finetune(config, num_steps=100)
    return config
