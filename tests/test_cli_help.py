"""The command line explains itself: every command and option has a sentence of help, and
each option with a default says what it is."""

from __future__ import annotations

import argparse

import pytest

from krmlx.cli import build_parser


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_top_level_description_says_what_krmlx_is():
    p = build_parser()
    assert "argparse" not in p.description
    assert "serving" in p.description


@pytest.mark.parametrize("name", sorted(subparsers(build_parser())))
def test_every_command_and_option_has_help_and_its_default(name):
    p = build_parser()
    sub = subparsers(p)[name]
    choice = next(a for a in p._subparsers._group_actions[0]._choices_actions if a.dest == name)
    assert choice.help, f"{name}: no one-line help"
    assert sub.description, f"{name}: no description"
    text = sub.format_help()
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name} {action.option_strings or action.dest}: no help"
        if action.default is not None and action.nargs not in (0, "+", "*"):
            shown = str(action.default)
            assert "default" in (action.help % {"default": action.default}
                                 if "%(default)" in action.help else action.help) or \
                f"(default: {shown})" in " ".join(text.split()), \
                f"{name} {action.option_strings}: default {shown!r} not shown"


def test_defaults_appear_in_help_text():
    serve = " ".join(subparsers(build_parser())["serve"].format_help().split())
    for fragment in ("--host HOST address to listen on (default: 127.0.0.1)",
                     "port to listen on (default: 8000)", "(default: auto)"):
        assert fragment in serve
    bench = " ".join(subparsers(build_parser())["bench"].format_help().split())
    assert "(default: 1)" in bench and "(default: runs)" in bench
