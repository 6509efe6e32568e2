"""The README stays true: its config reference is generated, and its commands exist and run."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_config_reference_matches_params_class():
    from autotrain.trainers.image_classification_custom.params import markdown_reference

    block = README.split("<!-- BEGIN CONFIG REFERENCE -->\n")[1].split("<!-- END CONFIG REFERENCE -->")[0]
    assert block == markdown_reference(), (
        "README config reference is stale: regenerate it with "
        "`python -m autotrain.trainers.image_classification_custom.params --markdown`"
    )


def _bash_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def test_every_make_target_in_readme_exists():
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    used = {word for cmd in _bash_commands() + re.findall(r"`make ([\w-]+)`", README) for word in [cmd]}
    for command in used:
        if command.startswith("make "):
            assert command.split()[1] in targets, command
        elif re.fullmatch(r"[\w-]+", command):
            assert command in targets, command


@pytest.mark.parametrize(
    "module",
    [
        "data_prep",
        "autotrain.trainers.image_classification_custom",
        "autotrain.trainers.image_classification_custom.params",
    ],
)
def test_readme_python_modules_answer_help(module):
    # the README wraps long commands across lines: compare with its whitespace collapsed
    assert f"python -m {module}" in " ".join(README.split()), f"README does not show `python -m {module}`"
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


def test_readme_app_command_answers_help():
    assert "python inference_app/app.py" in README
    result = subprocess.run(
        [sys.executable, "inference_app/app.py", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "--model" in result.stdout
    # the README's app section lists every option `--help` shows, one line each
    section = README.split("## Identify plants in the browser")[1].split("\n## ")[0]
    listed = {match.group(1) for line in section.splitlines() if (match := re.match(r"- `(--[\w-]+)", line))}
    options = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", result.stdout)) - {"--help"}
    assert options - listed == set(), f"README's app options leave out {sorted(options - listed)}"
    assert listed - options == set(), f"README's app options list unknown {sorted(listed - options)}"


def test_readme_figures_exist():
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (REPO_ROOT / target).is_file(), f"README shows {target}, which is not in the repository"
