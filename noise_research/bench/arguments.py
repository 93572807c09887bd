"""The benchmarks' command-line values: ``type=`` converters for argparse, and the check of the
values a benchmark hands on to an experiment config by the config's own rules.

Every mistake is one line naming the option, the value and what is allowed (``ArgumentTypeError``
from a converter, ``ConfigError`` from a config check); ``python -m noise_research.bench`` prints it
as ``error: ...`` and exits with status 2, before anything is compiled.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import jax

from noise_research import config_schema as cs

T = TypeVar("T")

BENCH_DEVICES = 1
"""The device count the config rules see: a benchmark times one device
(``timing.train_images_per_second``), whatever the machine has."""

_CONTEXT = cs.Context(config={}, num_devices=BENCH_DEVICES)


def integer(text: str) -> int:
    """``type=`` of an integer option (its limits: a rule, here or in the config it sets)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def number(text: str) -> float:
    """``type=`` of a real-number option (its limits: a rule)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def allowed_by(rule: cs.Rule, parse: Callable[[str], T] = integer) -> Callable[[str], T]:
    """``type=`` of an option whose value, ``parse(text)``, ``rule`` must allow."""

    def convert(text: str) -> T:
        try:
            value = parse(text)
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(
                f"{error}; it must be {rule.describe(_CONTEXT)}"
            ) from None
        if not rule.check(value, _CONTEXT):
            raise argparse.ArgumentTypeError(
                f"{value!r} is not allowed; it must be {rule.describe(_CONTEXT)}"
            )
        return value

    return convert


def comma_separated(item: Callable[[str], T]) -> Callable[[str], list[T]]:
    """``type=`` of a comma-separated list option: one item or more, each converted by ``item``."""

    def convert(text: str) -> list[T]:
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not allowed; it must be one value or more, separated by commas"
            )
        return [item(part) for part in parts]

    return convert


def output_path(text: str) -> str:
    """``type=`` of ``--out``: a file path (not a folder) in a folder that exists, or can be made,
    where a file can be written (tried with a temporary file), so no result is lost after the
    benchmark has run."""
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(
            f"{text!r} is a folder; it must be the path of the JSON file to write"
        )
    folder = os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} cannot be written: no file can be made in {folder!r} ({error.strerror})"
        ) from None
    return text


@contextlib.contextmanager
def options_named(options: Mapping[str, str]) -> Iterator[None]:
    """Inside, a :class:`ConfigError` about a config key that a benchmark option sets (``options``:
    dotted key -> option) is raised again with the option first:
    ``--size: config.data.crop_size = 5: not allowed; it must be an integer >= 8``."""
    try:
        yield
    except cs.ConfigError as error:
        message = str(error)  # "config.<key> = ...", "config.<key> is missing: ..."
        option = options.get(message.split(" ", 1)[0].removeprefix("config."))
        if option is None:
            raise
        raise cs.ConfigError(f"{option}: {message}") from None


def default_for_platform(value: T | None, *, accelerator: T, cpu: T) -> T:
    """``value``, or where it is None (the option not given) this machine's default: ``cpu`` when
    the first device is a CPU, else ``accelerator``."""
    if value is not None:
        return value
    return cpu if jax.devices()[0].platform == "cpu" else accelerator
