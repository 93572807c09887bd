"""Positive noise (the positive-noise paper) on CIFAR-10 (TFDS): ResNet-18 with the small stem,
or ViT-S with 4² patches (64 tokens).

    --config configs/positive_noise/cifar10.py:linear       ResNet-18, linear-transform noise
                                                            (α = 0.4) before the last block of
                                                            stage 4, in training only
    --config configs/positive_noise/cifar10.py:vit_linear   ViT-S/4, before its last block
    ... --config.model.noise.at_eval=True                   the authors' protocol

Arguments: none, gaussian, linear, optimal_q, salt_pepper, each also with the prefix vit_.
Strengths: the paper's σ = 1, α = 0.4; salt-and-pepper α = 0.1 is ours. ResNet-18: SGD, lr 0.1,
weight decay 5e-4, 200 epochs (as configs/classify/cifar10_resnet18.py); ViT-S/4: AdamW, lr 5e-4,
weight decay 0.05, 200 epochs (ours: the paper trains ViTs on ImageNet only). Evaluation batches
of 200 divide the 10 000 test images (no padding rows; 8 devices too). Sweeps of Figure 2:
SWEEP_GRIDS, e.g.
    python launch/sweep.py configs/positive_noise/cifar10.py:linear runs/c10_strength \\
        --grids-from strength
Every key, its default and its meaning: noise_research/tasks/classify.py (the config sections).
"""

from noise_research.tasks import classify

SWEEP_GRIDS = classify.positive_noise_sweep_grids(18, "S")


def get_config(arg: str | None = None):
    config = classify.positive_noise_experiment_config(
        arg,
        dataset="cifar10",
        num_classes=10,
        image_size=32,
        depth=18,
        stem="small",
        vit_size="S",
        patch_size=4,
        num_steps=39_000,  # 200 epochs of 50 000 images at batch 256
        resnet=dict(learning_rate=0.1, warmup_steps=500),
        vit=dict(learning_rate=5e-4, warmup_steps=975),  # 5 epochs
    )
    config.data.eval_batch_size = 200
    if config.model.architecture == "resnet":
        config.optimizer.weight_decay = 5e-4
    return config
