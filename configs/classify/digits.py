"""The embedded default: ResNet-18 (small stem, width 16) on scikit-learn digits upscaled to 16².

Reaches 94–97% test accuracy (seeds 0–3) in half a minute on 2 CPU cores, with any quantizer:
    --config configs/classify/digits.py          plain convolutions
    --config configs/classify/digits.py:pow      POW (sf, pow, hpow, sf_pow, dorefa likewise)
    --config configs/classify/digits.py:stability --config.finetune.init_workdir=RUN
                                                 the stability-training baseline: fine-tunes
                                                 RUN's classifier (RUN: a plain digits run)
DoReFa trains with AdamW (lr 1e-2), the others with SGD + Nesterov momentum (lr 0.1).
Every key, its default and its meaning: noise_research/tasks/classify.py (the config sections).
"""

from noise_research.tasks import classify


def get_config(arg: str | None = None):
    variant = classify.variant_from_arg(arg)
    config = classify.experiment_config(
        dataset="digits",
        depth=18,
        stem="small",
        num_classes=10,
        image_size=16,
        variant=variant,
        num_steps=200,
        stability_steps=100,
        warmup_steps=30,
    )
    config.train.update(log_every=25, eval_every=100, checkpoint_every=100)
    config.data.update(batch_size=64, eval_batch_size=100)
    config.model.width = 16
    config.loss.label_smoothing = 0.0
    if variant == "dorefa":
        # 1-bit weights flip sign only after large steps of their latent values: DoReFa-Net trains
        # with Adam, and SGD at lr 0.1 stays near chance for the first few hundred steps here.
        config.optimizer.update(name="adamw", learning_rate=1e-2)
    return config
