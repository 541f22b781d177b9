"""esctl's interface (every group, command, argument and option, with its default, environment
variable and help) is the one checked in at tests/unit/esctl_interface.json.

A change to the interface is a change to this snapshot, made on purpose: regenerate it with
`python -m tests.unit.test_esctl_interface` and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer.main

from esctl.app import app
from esctl.common import STATE_DIR

SNAPSHOT = Path(__file__).with_name("esctl_interface.json")


def _value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    if isinstance(value, Path) and value.is_relative_to(STATE_DIR):  # whatever the environment
        return f"$ESCTL_STATE_DIR/{value.relative_to(STATE_DIR)}"
    return str(value)  # a Path, an enum


def _type(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def _parameter(param: Any) -> dict[str, Any]:
    return {
        "name": param.name,
        "kind": type(param).__name__,
        "opts": list(param.opts),
        "secondary_opts": list(param.secondary_opts),
        "type": _type(param.type_descriptor.annotation),
        "required": param.required,
        "default": _value(param.default),
        "multiple": param.multiple,
        "envvar": _value(param.envvar),
        "help": getattr(param, "help", None),
        "metavar": param.metavar,
        "hidden": getattr(param, "hidden", False),
        "is_flag": getattr(param, "is_flag", False),
        "min": _value(getattr(param, "min", None)),
        "max": _value(getattr(param, "max", None)),
        "show_default": _value(getattr(param, "show_default", None)),
    }


def command_tree(command: Any | None = None) -> dict[str, Any]:
    """Every command under `command` (esctl's root by default), in the order help lists them."""
    command = command if command is not None else typer.main.get_command(app)
    tree: dict[str, Any] = {
        "help": command.help,
        "short_help": command.short_help,
        "no_args_is_help": getattr(command, "no_args_is_help", False),
        "params": [_parameter(p) for p in command.params],
    }
    subcommands = getattr(command, "commands", None)
    if subcommands is not None:
        tree["commands"] = {name: command_tree(sub) for name, sub in subcommands.items()}
    return tree


def test_every_esctl_command_and_option_is_the_checked_in_one() -> None:
    """The command tree (names and order, arguments, options, defaults, environment variables,
    help texts) equals the snapshot: moving or splitting the CLI changes none of it."""
    assert command_tree() == json.loads(SNAPSHOT.read_text())


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(command_tree(), indent=1, sort_keys=False) + "\n")
