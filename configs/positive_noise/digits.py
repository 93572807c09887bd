"""Positive noise (the positive-noise paper) on the embedded digits, sized for a CPU: ResNet-18
(small stem, width 16) or the tiny ViT (width 64, 4 blocks, 4² patches) on 16² digits.

    --config configs/positive_noise/digits.py:linear        ResNet-18, linear-transform noise
                                                            (α = 0.4) before the last block of
                                                            stage 4, in training only
    --config configs/positive_noise/digits.py:vit_linear    the tiny ViT, the same noise before
                                                            its last block (patch tokens)
    ... --config.model.noise.at_eval=True                   the authors' protocol: the noise
                                                            acts at evaluation too

Arguments: none, gaussian, linear, optimal_q, salt_pepper (ResNet-18), and each with the prefix
vit_ (the tiny ViT): vit_none, vit_gaussian, ... The paper's strengths: σ = 1, α = 0.4 (linear);
salt-and-pepper α = 0.1 is ours (the paper gives none). Evaluation batches of 99 divide the 297
test digits, so the batch-mixing kinds may act at evaluation (no padding rows; on 2+ devices
set --config.data.eval_batch_size to a multiple of the device count and num_eval_batches so
that no batch is padded, tasks/classify.py says how).

The Figure 2 ablations as sweeps (SWEEP_GRIDS, `positive_noise_sweep_grids`):
    python launch/sweep.py configs/positive_noise/digits.py:linear runs/pn_strength \\
        --grids-from strength                    # α = 0.1 … 0.5
    python launch/sweep.py configs/positive_noise/digits.py:none runs/pn_types \\
        --grids-from type_strength               # Gaussian / linear / salt-and-pepper × 0.1 … 0.4
    python launch/sweep.py configs/positive_noise/digits.py:linear runs/pn_layer --grids-from layer
    python launch/sweep.py configs/positive_noise/digits.py:vit_linear runs/pn_vit_layer \\
        --grids-from vit_layer
Every key, its default and its meaning: noise_research/tasks/classify.py (the config sections).
"""

from noise_research.tasks import classify

SWEEP_GRIDS = classify.positive_noise_sweep_grids(18, "tiny")


def get_config(arg: str | None = None):
    config = classify.positive_noise_experiment_config(
        arg,
        dataset="digits",
        num_classes=10,
        image_size=16,
        depth=18,
        stem="small",
        vit_size="tiny",
        patch_size=4,
        resnet=dict(num_steps=200, learning_rate=0.1, warmup_steps=30),
        vit=dict(num_steps=600, learning_rate=3e-3, warmup_steps=30),
    )
    config.train.update(log_every=25, eval_every=100, checkpoint_every=100)
    config.data.update(batch_size=64, eval_batch_size=99)
    config.model.width = 16
    config.loss.label_smoothing = 0.0
    return config
