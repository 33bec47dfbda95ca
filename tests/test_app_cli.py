"""The ``fastrnn`` command line: help text, subcommands, the lazily imported bench."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

import fastrnn.apps
from fastrnn.apps import cli


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["train", "sample"])
def test_every_option_is_documented(command):
    sub = _subparsers(cli.build_parser())[command]
    for action in sub._actions:
        assert action.help and action.help.strip(), f"{command} {action.option_strings} has no help"
    text = sub.format_help()
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in text


def test_train_help_states_device_defaults():
    text = _subparsers(cli.build_parser())["train"].format_help()
    assert "on CPU" in text and "on CUDA" in text and "--max-minutes" in text


def test_bench_is_lazy(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastrnn.apps.bench", None)  # as if the module could not be imported
    assert cli.main(["bench"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastrnn: error: the bench subcommand is not available") and err.count("\n") == 1


def test_bench_delegates_to_its_module(capsys, monkeypatch):
    import types

    fake = types.ModuleType("fastrnn.apps.bench")
    fake.add_arguments = lambda p: p.add_argument("--cells", default="lstm")
    fake.main = lambda args: print(f"bench {args.cells}") or 0
    monkeypatch.setitem(sys.modules, "fastrnn.apps.bench", fake)
    # `import fastrnn.apps.bench as bench` reads the package attribute once another test imported the real module
    monkeypatch.setattr(fastrnn.apps, "bench", fake, raising=False)
    assert cli.main(["bench", "--cells", "gru"]) == 0
    assert capsys.readouterr().out == "bench gru\n"


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--hidden", "-3"])
    assert info.value.code == 2 and "must be > 0" in capsys.readouterr().err


def test_console_script_help():
    exe = shutil.which("fastrnn", path=str(__import__("pathlib").Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "fastrnn.apps.cli"]
    proc = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "train" in proc.stdout and "sample" in proc.stdout
