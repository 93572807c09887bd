"""Config validation: every key known, every value checked, one clear line per mistake.

A task declares a ``{dotted.key: Rule}`` mapping for every key its config may hold. :func:`validate`
runs before anything is built or compiled and raises :class:`ConfigError` naming the key, the value
given and what is allowed. Works on ``ml_collections.ConfigDict`` or plain nested dicts (this module
does not import ml_collections).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import numbers
from collections.abc import Callable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A config value that is not allowed; the message is one line naming key, value and rule."""


@dataclasses.dataclass(frozen=True)
class Context:
    """What rules may look at besides the value: the whole config and the device count."""

    config: Mapping[str, Any]
    num_devices: int

    def get(self, dotted_key: str) -> Any:
        node: Any = self.config
        for part in dotted_key.split("."):
            node = node[part]
        return node


@dataclasses.dataclass(frozen=True)
class Rule:
    """``check(value, context) -> bool`` and the human description of what is allowed."""

    check: Callable[[Any, Context], bool]
    allowed: str | Callable[[Context], str]

    def describe(self, context: Context) -> str:
        return self.allowed(context) if callable(self.allowed) else self.allowed


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(minimum: int | None = None, maximum: int | None = None) -> Rule:
    bounds = _bounds_text(minimum, maximum)
    return Rule(
        lambda v, _: (
            _is_int(v) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum)
        ),
        f"an integer{bounds}",
    )


def number(minimum: float | None = None, maximum: float | None = None) -> Rule:
    bounds = _bounds_text(minimum, maximum)
    return Rule(
        lambda v, _: (
            _is_number(v)
            and (minimum is None or v >= minimum)
            and (maximum is None or v <= maximum)
        ),
        f"a number{bounds}",
    )


def positive_number() -> Rule:
    return Rule(lambda v, _: _is_number(v) and v > 0, "a number > 0")


def fraction_below_one() -> Rule:
    """A number in [0, 1): a momentum, a smoothing weight."""
    return Rule(lambda v, _: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v, _: v in choices, "one of " + ", ".join(repr(c) for c in choices))


def boolean() -> Rule:
    return Rule(lambda v, _: isinstance(v, bool), "True or False")


def text() -> Rule:
    return Rule(lambda v, _: isinstance(v, str) and bool(v), "a non-empty string")


def optional(rule: Rule) -> Rule:
    return Rule(
        lambda v, ctx: v is None or rule.check(v, ctx),
        lambda ctx: f"None or {rule.describe(ctx)}",
    )


def batch_size() -> Rule:
    """A global batch size: positive and divisible by the number of devices."""
    return Rule(
        lambda v, ctx: _is_int(v) and v > 0 and v % ctx.num_devices == 0,
        lambda ctx: f"a positive integer divisible by the device count ({ctx.num_devices})",
    )


def _bounds_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}} -> {'a.b': 1}``; nested mappings are walked, everything else is a leaf."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "to_dict"):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value before, value now)`` for every leaf that differs (None where absent),
    compared as JSON: a tuple read back from a run's ``config.json`` as a list is no change."""
    before_flat = flatten(json.loads(json.dumps(before)))
    now_flat = flatten(json.loads(json.dumps(now)))
    return [
        (key, before_flat.get(key), now_flat.get(key))
        for key in sorted(before_flat.keys() | now_flat.keys())
        if before_flat.get(key) != now_flat.get(key)
    ]


def unknown_key_message(key: str, value: Any, known: Mapping[str, Any] | list[str]) -> str:
    """``config.<key> = <value>: unknown key; did you mean config.<closest>?``."""
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean config.{close[0]}?" if close else ""
    return f"config.{key} = {value!r}: unknown key{hint}"


def validate(config: Mapping[str, Any], rules: Mapping[str, Rule], *, num_devices: int) -> None:
    """Raises :class:`ConfigError` on the first unknown, missing or disallowed key."""
    flat = flatten(config)
    context = Context(config=config, num_devices=num_devices)
    for key, value in flat.items():
        if key not in rules:
            raise ConfigError(unknown_key_message(key, value, rules))
    for key, rule in rules.items():
        if key not in flat:
            raise ConfigError(f"config.{key} is missing: it must be {rule.describe(context)}")
        if not rule.check(flat[key], context):
            raise ConfigError(
                f"config.{key} = {flat[key]!r}: not allowed; it must be {rule.describe(context)}"
            )
