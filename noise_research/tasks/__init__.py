"""Trainers: one module per task, each with its config ``SECTIONS`` (name -> section class),
``config_rules()`` and ``build(config) -> Task``.

Modules are imported on demand, so a task's heavier dependencies load only when it runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from noise_research.config_schema import ConfigError

TASK_MODULES = {
    "halftone": "noise_research.tasks.halftone",
    "classify": "noise_research.tasks.classify",
    "gan": "noise_research.tasks.gan",
    "autoencoder": "noise_research.tasks.autoencoder",
    "colour_hiding": "noise_research.tasks.colour_hiding",
    "semantic_synthesis": "noise_research.tasks.semantic_synthesis",
}


def task_module(name: str) -> ModuleType:
    """The module of task ``name``; a clear error lists the known tasks."""
    if name not in TASK_MODULES:
        raise ConfigError(
            f"config.task = {name!r}: unknown task; allowed: {', '.join(TASK_MODULES)}"
        )
    return importlib.import_module(TASK_MODULES[name])
