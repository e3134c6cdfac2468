"""Every `python -m flows.<name> ...` command the README shows is one its CLI accepts.

The commands are read from the README itself (code blocks, with their `\\` continuations, and
inline code), so a renamed or removed flag fails here before a user types it. Each runs up to its
argument parsing: the CLI's `run_cli` is replaced by a recorder, so nothing is downloaded or built.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
# Notation, not a command: `flows.<stage> --help`, `flows.verify STORE [STAGE[/KEY]]`, `flows.*`.
NOTATION = re.compile(r"<stage>|\[|flows\.\*")


def readme_commands() -> list[str]:
    text = README.read_text()
    commands = []
    in_block = False
    pending = ""
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            line = pending + line
            pending = ""
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1] + " "
                continue
            if line.strip().startswith("python -m flows."):
                commands.append(line.strip())
        else:
            commands += re.findall(r"`(python -m flows\.[^`]*)`", line)
    return [c for c in dict.fromkeys(commands) if not NOTATION.search(c)]


COMMANDS = readme_commands()


def test_the_readme_shows_commands_of_every_stage():
    modules = {shlex.split(c, comments=True)[2] for c in COMMANDS}
    assert {"flows.pipeline", "flows.download", "flows.encode_latents", "flows.train", "flows.sample",
            "flows.evaluate"} <= modules, modules  # fmt: skip
    assert len(COMMANDS) >= 30, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_is_accepted_by_its_cli(command, monkeypatch):
    argv = shlex.split(command, comments=True)
    assert argv[:2] == ["python", "-m"], command
    module = importlib.import_module(argv[2])
    ran = []
    monkeypatch.setattr(module, "run_cli", lambda body, **_: ran.append(body) or 0)
    try:
        code = module.main(argv[3:])
    except SystemExit as exit_:  # argparse: a flag or value the CLI does not take
        pytest.fail(f"{command!r} is refused by its CLI (exit {exit_.code})")
    assert code == 0 and len(ran) == 1, command
