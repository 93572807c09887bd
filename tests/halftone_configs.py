"""Tiny halftoning configs for tests (plain nested dicts, as the task receives them)."""

from __future__ import annotations

from noise_research.tasks.halftone import experiment_config


def tiny_halftone_config(
    first_layer: str = "nib", model: str = "resnet", **train_overrides
) -> dict:
    """32² crops, width 8, no pictures at the end (the report has its own test)."""
    config = experiment_config(model=model, first_layer=first_layer, demo=True).to_dict()
    config["data"].update(crop_size=32, batch_size=4, constant_batch_size=4)
    config["model"].update(width=8)
    config["eval"].update(image_size=32, batch_size=8, num_batches=1, report_image_size=32)
    config["train"].update(
        num_steps=4,
        final_report=False,
        log_every=2,
        eval_every=100,
        checkpoint_every=1000,  # the forced save at the end is enough
        progress=False,
        async_checkpoints=False,
    )
    config["train"].update(train_overrides)
    return config
