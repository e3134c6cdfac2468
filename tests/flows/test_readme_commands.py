"""Every `python -m flows.<name> ...` command the README shows is one its CLI accepts.

The commands are read from the README itself (code blocks, with their `\\` continuations, and
inline code), so a renamed or removed flag fails here before a user types it. Each runs up to its
argument parsing: the CLI's `run_cli` is replaced by a recorder, so nothing is downloaded or built.
"""

from __future__ import annotations

import importlib
import os
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


# --- the commands run for real (slow): each works, or fails in one line that says what to do ----------

# By design these fetch from the datasets' official hosts; a test never touches the network.
NETWORK = re.compile(r"--preset cifar10-s2\s*(#|$)|--dataset cifar10 --store|cocodataset\.org")
# What a user replaces with their own: data folders, URLs, files, keys, buckets, official files.
PLACEHOLDER = re.compile(r"/data/|~/|<key>|\bURL\b|\bFILE\b|\bDIR\b|s3://bucket|nnet_ema\.pth|prompts\.txt|"
                         r"\.npz|weights-inception|assets/")  # fmt: skip
# The rest uses only built-in data: it must work as written (ordered so the cheapest builds come first
# and the later ones reuse their cache in the shared working folder).
OFFLINE = sorted((c for c in COMMANDS if not NETWORK.search(c)), key=lambda c: (not PLACEHOLDER.search(c), c))


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """A user's working folder and home: empty, offline, its own Prefect home; S3 points at a closed port."""
    home = tmp_path_factory.mktemp("user")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "UVIT_", "AWS_"))}
    env.update(HOME=str(home), PREFECT_HOME=str(home / ".prefect"), PYTHONPATH=str(README.parent),
               AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
    return home, env


def test_the_network_and_placeholder_patterns_are_what_the_readme_shows():
    network = [c for c in COMMANDS if NETWORK.search(c)]
    assert len(network) == 3, network  # cifar10 twice (official URL by default), COCO from its hosts
    assert {c for c in OFFLINE if not PLACEHOLDER.search(c)} >= {
        "python -m flows.pipeline --preset tiny                          # all five stages, here",
        "python -m flows.download --dataset shapes --store ./uvit-store                  # built-in, offline",
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", OFFLINE, ids=[f"{i:02d}-{shlex.split(c, comments=True)[2]}" for i, c in enumerate(OFFLINE)]
)
def test_readme_command_works_or_fails_in_one_line(command, user_folder):
    import subprocess
    import sys

    home, env = user_folder
    argv = [a.replace("~", str(home), 1) if a.startswith("~") else a for a in shlex.split(command, comments=True)]
    out = subprocess.run([sys.executable, *argv[1:]], cwd=home, env=env, capture_output=True, text=True,
                         timeout=1500)  # fmt: skip
    both = out.stdout + out.stderr
    assert "Traceback" not in both, both[-4000:]
    if not PLACEHOLDER.search(command):
        assert out.returncode == 0, both[-4000:]  # built-in data only: it works as written
        return
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert out.returncode == 1 and len(errors) == 1, (out.returncode, both[-4000:])
    assert out.stderr.rstrip().splitlines()[-1] == errors[0] or "Stopping temporary server" in out.stderr, both[-3000:]
    assert len(errors[0]) > len("error: ") + 20, errors  # a sentence, not a bare exception name
