"""Every ``--help`` page of both CLIs teaches by example, and the example parses."""

from __future__ import annotations

import re
import shlex

import pytest
import typer
from typer.testing import CliRunner

from central.cli import app as central_app
from edge_agent.cli import app as agent_app

APPS = {"edge-agent": agent_app, "central": central_app}


def _walk(cmd, path: tuple[str, ...] = ()):
    """The app itself, then every command and nested group under it (depth first)."""
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        if not sub.hidden:
            yield from _walk(sub, (*path, name))


PAGES = [(prog, path, cmd) for prog, app in APPS.items() for path, cmd in _walk(typer.main.get_command(app))]


def test_the_walk_finds_the_nested_commands():
    found = {" ".join((prog, *path)) for prog, path, _ in PAGES}
    assert {"edge-agent data digits", "central devices revoke", "edge-agent pull-kit", "central export"} <= found
    assert len(found) > 25


@pytest.mark.parametrize(("prog", "path", "cmd"), PAGES, ids=[" ".join((p, *path)) for p, path, _ in PAGES])
def test_every_help_page_has_a_working_example(prog, path, cmd):
    r = CliRunner().invoke(APPS[prog], [*path, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert r.exit_code == 0, r.output
    examples = [line.strip().removeprefix("Example:").strip() for line in r.output.splitlines()
                if line.strip().startswith("Example:")]
    assert examples, f"`{' '.join((prog, *path))} --help` has no Example: line"
    words = shlex.split(examples[0])
    assert words[: 1 + len(path)] == [prog, *path], examples[0]
    # It parses: a group's example names one of its commands, and the command accepts every option given.
    leaf, rest = cmd, words[1 + len(path) :]
    while hasattr(leaf, "commands"):
        assert rest and rest[0] in leaf.commands, examples[0]
        leaf, rest = leaf.commands[rest[0]], rest[1:]
    leaf.make_context(leaf.name, rest)  # raises a usage error on an unknown option or a bad value


@pytest.mark.parametrize(("prog", "path", "cmd"), PAGES, ids=[" ".join((p, *path)) for p, path, _ in PAGES])
def test_every_command_goes_through_the_error_wrapper(prog, path, cmd):
    if hasattr(cmd, "commands"):
        return
    assert getattr(cmd.callback, "__cli_errors__", False), f"{prog} {' '.join(path)} is not wrapped by cli_support.friendly"


@pytest.mark.parametrize("prog", APPS)
def test_the_top_level_help_names_the_exit_codes(prog):
    r = CliRunner().invoke(APPS[prog], ["--help"], env={"COLUMNS": "400"})
    assert re.search(r"Exit codes: 0 done, 1 refused, 2 bad input, 75 .*130 interrupted \(docs/cli\.md\)", r.output)
    assert "--version" in r.output


# Every command that produces a result prints it as one JSON object with --json (docs/cli.md).
JSON_COMMANDS = {
    "edge-agent": ["train", "run", "infer", "pull", "pull-kit", "upload", "sync", "enroll", "status"],
    "central": ["init", "consolidate", "evaluate", "export"],
}
NEW_FLAGS = {
    ("edge-agent", "train"): ["--force", "--fresh"],
    ("central", "init"): ["--force"],
    ("central", "consolidate"): ["--force"],
    ("central", "export"): ["--force", "--min-agreement", "--eval-data"],
}


def _options(prog: str, path: tuple[str, ...]) -> set[str]:
    cmd = typer.main.get_command(APPS[prog])
    for name in path:
        cmd = cmd.commands[name]
    return {o for p in cmd.params for o in p.opts}


@pytest.mark.parametrize(("prog", "name"), [(p, n) for p, names in JSON_COMMANDS.items() for n in names])
def test_every_result_command_has_json(prog, name):
    assert "--json" in _options(prog, (name,))
    r = CliRunner().invoke(APPS[prog], [name, "--help"], env={"COLUMNS": "400"})
    assert "--json" in r.output


@pytest.mark.parametrize(("where", "flags"), NEW_FLAGS.items(), ids=[" ".join(k) for k in NEW_FLAGS])
def test_overwrite_and_gate_flags_are_on_their_help_pages(where, flags):
    prog, name = where
    assert set(flags) <= _options(prog, (name,))
    r = CliRunner().invoke(APPS[prog], [name, "--help"], env={"COLUMNS": "400"})
    assert all(f in r.output for f in flags)


@pytest.mark.parametrize("prog", APPS)
def test_both_apps_take_quiet_and_verbose(prog):
    assert {"--quiet", "-q", "--verbose", "-v", "--version"} <= _options(prog, ())
    r = CliRunner().invoke(APPS[prog], ["--help"], env={"COLUMNS": "400"})
    assert "--quiet" in r.output and "--verbose" in r.output
    r = CliRunner().invoke(APPS[prog], ["--version"])
    assert r.exit_code == 0 and r.output.startswith("edge-dcl ")
