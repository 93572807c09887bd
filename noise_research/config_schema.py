"""Config sections and validation: every key declared once, every value checked, one clear line
per mistake.

A config section is a frozen dataclass next to the code that reads it (``train.loop.LoopConfig``,
``train.optim.OptimizerConfig``, a task's data / model / loss sections). Each field is declared
with :func:`setting`: its default, its :class:`Rule` and its meaning side by side; a field holding
another section is declared with :func:`subsection`. From the sections of an experiment come

* its rules (:func:`section_rules`), which :func:`validate` checks before anything is built or
  compiled, raising :class:`ConfigError` naming the key, the value given and what is allowed;
* its ``ml_collections.ConfigDict`` of defaults (:func:`config_dict`), which the files in
  ``configs/`` adjust; a section instance with other values gives a task its own defaults;
* the typed object the code reads (:func:`read_section`) instead of string lookups;
* the key listing with meanings (:func:`describe_keys`).

Validation works on ``ml_collections.ConfigDict`` or plain nested dicts.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

SectionT = TypeVar("SectionT")


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
    """A finite number > 0 (a learning rate of inf or nan is a mistake, not a setting)."""
    return Rule(lambda v, _: _is_number(v) and 0 < v < math.inf, "a finite number > 0")


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
    """``config.<key> = <value>: unknown key; did you mean config.<closest>?``, or, with nothing
    close, the keys the config has at that level. A key under a known section is matched against
    that section's keys, a misspelt section against every key."""
    parent, _, leaf = key.rpartition(".")
    prefix = f"{parent}." if parent else ""
    siblings = sorted({k[len(prefix) :].split(".")[0] for k in known if k.startswith(prefix)})
    if siblings:
        close = [prefix + name for name in difflib.get_close_matches(leaf, siblings, n=1)]
    else:
        close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return f"config.{key} = {value!r}: unknown key; did you mean config.{close[0]}?"
    where = f"config.{parent}" if parent else "the config"
    listed = f"; {where} has: {', '.join(siblings)}" if siblings else ""
    return f"config.{key} = {value!r}: unknown key{listed}"


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


def setting(
    default: Any,
    rule: Rule,
    doc: str,
    *,
    placeholder: type | None = None,
    resumable: bool = False,
) -> Any:
    """Declares a config key: its ``default``, its ``rule`` and its meaning ``doc``, side by side.

    A key whose default is None gives the type of the values it takes as ``placeholder`` (the
    command line then accepts ``--config.key=value`` for it). A ``resumable`` key may change when
    a run resumes (a cadence, the progress bar, an evaluation-only setting): it does not change
    what the run trains. Any other change is refused on resume (see ``train.workdir``).
    """
    if default is None and placeholder is None:
        raise TypeError("a setting whose default is None needs placeholder=<type>")
    return dataclasses.field(
        default=default,
        metadata={"rule": rule, "doc": doc, "placeholder": placeholder, "resumable": resumable},
    )


def subsection(factory: Callable[[], Any], doc: str) -> Any:
    """Declares a field that holds a whole section (``model.nib``), with its defaults."""
    return dataclasses.field(default_factory=factory, metadata={"doc": doc})


def _is_section(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _leaf_fields(prefix: str, section: Any) -> Iterator[tuple[str, dataclasses.Field]]:
    """``('prefix.key', field)`` for every key of ``section`` (a class or instance), nested
    sections walked."""
    instance = section() if isinstance(section, type) else section
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if _is_section(value):
            yield from _leaf_fields(f"{prefix}.{field.name}", value)
        else:
            yield f"{prefix}.{field.name}", field


def section_rules(prefix: str, section: Any) -> dict[str, Rule]:
    """``{'prefix.key': rule}`` for every key of ``section`` (a section class or instance)."""
    return {key: field.metadata["rule"] for key, field in _leaf_fields(prefix, section)}


def experiment_rules(sections: Mapping[str, Any], **top_level: Rule) -> dict[str, Rule]:
    """The rules of a whole experiment config: ``top_level`` keys and every section's keys."""
    rules = dict(top_level)
    for name, section in sections.items():
        rules.update(section_rules(name, section))
    return rules


def resumable_keys(sections: Mapping[str, Any]) -> set[str]:
    """The dotted keys of ``sections`` declared ``resumable`` (free to change on resume)."""
    return {
        key
        for name, section in sections.items()
        for key, field in _leaf_fields(name, section)
        if field.metadata["resumable"]
    }


def default_values(sections: Mapping[str, Any]) -> dict[str, Any]:
    """``{'section.key': default}`` for every key of ``sections`` (a section instance's values
    for an instance), as JSON values (tuples as lists)."""
    values = {}
    for name, section in sections.items():
        instance = section() if isinstance(section, type) else section
        values.update(flatten({name: dataclasses.asdict(instance)}))
    return json.loads(json.dumps(values))


def describe_keys(prefix: str, section: Any) -> dict[str, str]:
    """``{'prefix.key': meaning}`` for every key of ``section``."""
    return {key: field.metadata["doc"] for key, field in _leaf_fields(prefix, section)}


def config_dict(sections: Mapping[str, Any], **top_level: Any) -> Any:
    """An ``ml_collections.ConfigDict`` holding ``top_level`` keys and each section's values."""
    import ml_collections
    from ml_collections import config_dict as ml_config_dict

    def section_dict(instance: Any) -> ml_collections.ConfigDict:
        node = ml_collections.ConfigDict()
        for field in dataclasses.fields(instance):
            value = getattr(instance, field.name)
            if _is_section(value):
                node[field.name] = section_dict(value)
            elif value is None:
                node[field.name] = ml_config_dict.placeholder(field.metadata["placeholder"])
            else:
                node[field.name] = value
        return node

    config = ml_collections.ConfigDict(dict(top_level))
    for name, instance in sections.items():
        config[name] = section_dict(instance)
    return config


def read_section(section_class: type[SectionT], values: Mapping[str, Any]) -> SectionT:
    """The typed section of a validated config's sub-mapping (nested sections included)."""
    kwargs = {}
    for field in dataclasses.fields(section_class):
        value = values[field.name]
        if field.default_factory is not dataclasses.MISSING:
            value = read_section(type(field.default_factory()), value)
        elif isinstance(value, list):  # a tuple read back from JSON
            value = tuple(value)
        kwargs[field.name] = value
    return section_class(**kwargs)
