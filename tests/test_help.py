"""Every console script in setup.cfg, and each of its subcommands, answers --help with exit 0 and a usage
line (README: "Every command has --help")."""
import configparser
import importlib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


def _console_scripts() -> dict[str, str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def _commands():
    """(name, [args]) for each script and every subcommand below it, plus the demo module."""
    found = []

    def walk(name, command, path):
        found.append((name, command, path))
        if isinstance(command, click.Group):
            for sub_name, sub in sorted(command.commands.items()):
                walk(name, sub, path + [sub_name])

    targets = {**_console_scripts(), "python -m train.demo": "train.demo:main"}
    for name, target in sorted(targets.items()):
        module, _, attribute = target.partition(":")
        walk(name, getattr(importlib.import_module(module), attribute), [])
    return found


def test_the_four_documented_scripts_are_installed():
    assert sorted(_console_scripts()) == ["sslfer-eval", "sslfer-manifest", "sslfer-prep", "sslfer-train"]


COMMANDS = _commands()


@pytest.mark.parametrize("name, command, path", COMMANDS, ids=[" ".join([c[0], *c[2]]) for c in COMMANDS])
def test_help_works(name, command, path):
    root = next(c for n, c, p in COMMANDS if n == name and not p)
    result = CliRunner().invoke(root, [*path, "--help"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output.startswith("Usage: ") and "--help" in result.output
    assert (command.help or command.short_help or "").strip(), f"{name} {' '.join(path)} has no help text"
