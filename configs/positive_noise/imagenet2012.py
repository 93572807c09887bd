"""Positive noise (the positive-noise paper) on ImageNet (TFDS imagenet2012): ResNet-50 or
ViT-B/16, bfloat16, as the paper's Tables 1 and 2.

    --config configs/positive_noise/imagenet2012.py:linear       ResNet-50, linear-transform
                                                                 noise (α = 0.4) before the last
                                                                 block of stage 4 (training only)
    --config configs/positive_noise/imagenet2012.py:vit_linear   ViT-B/16, before block 12
    ... --config.model.noise.at_eval=True                        the authors' protocol
    ... --config.model.depth=18                                  Table 1's other ResNets (18, 34,
                                                                 101); --config.model.vit_size=Ti
                                                                 / S / L Table 2's other ViTs

Arguments: none, gaussian, linear, optimal_q, salt_pepper, each also with the prefix vit_.
Strengths: the paper's σ = 1, α = 0.4; salt-and-pepper α = 0.1 is ours. ResNet-50: SGD, lr 0.1,
90 epochs (as configs/classify/imagenet_resnet50.py). ViT-B/16 from scratch: AdamW, lr 2.5e-4 at
batch 256, weight decay 0.05, 300 epochs (DeiT's; the paper fine-tunes an ImageNet-21k ViT-B,
which this codebase cannot load). The paper trains its ResNets without augmentation beyond
normalisation; the TFDS source here always augments (random-resized crop + flip). Evaluation
batches of 400 divide the 50 000 validation images (no padding rows, up to 16 devices). Sweeps of
Figure 2: SWEEP_GRIDS, e.g.
    python launch/sweep.py configs/positive_noise/imagenet2012.py:vit_linear runs/in_vit_layer \\
        --grids-from vit_layer                   # before blocks 6, 8, 10, 12
Every key, its default and its meaning: noise_research/tasks/classify.py (the config sections).
"""

from noise_research.tasks import classify

SWEEP_GRIDS = classify.positive_noise_sweep_grids(50, "B")


STEPS_PER_EPOCH = 1_281_167 // 256


def get_config(arg: str | None = None):
    config = classify.positive_noise_experiment_config(
        arg,
        dataset="imagenet2012",
        num_classes=1000,
        image_size=224,
        depth=50,
        stem="imagenet",
        vit_size="B",
        patch_size=16,
        warmup_steps=5 * STEPS_PER_EPOCH,
        resnet=dict(num_steps=90 * STEPS_PER_EPOCH, learning_rate=0.1),
        vit=dict(num_steps=300 * STEPS_PER_EPOCH, learning_rate=2.5e-4),
    )
    config.data.update(eval_split="validation", eval_batch_size=400)
    config.train.eval_every = 25_000
    config.model.dtype = "bfloat16"
    return config
