"""README keeps exactly two set-up commands, and CI runs its test command verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```\n(.*?)```", section, re.S)]


def test_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2
    assert "modelchip compare" in commands[0] and "modelchip generate" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    assert _setup_commands()[1] in (ROOT / ".ci" / "run").read_text()
