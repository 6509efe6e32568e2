"""The app's command line: environment defaults (a Space's settings) are checked like the flags they stand for."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_app.options import parse_args

REPO_ROOT = Path(__file__).resolve().parents[1]

# every environment variable options.py reads, with a value its flag refuses, and that flag
BAD_ENV = [
    ("MAP_MAX_POINTS", "abc", "--map-max-points"),
    ("MAP_MAX_POINTS", "3", "--map-max-points"),
    ("KEEP_UPLOADS", "abc", "--keep-uploads"),
    ("MIN_SIDE", "abc", "--min-side"),
    ("IMAGE_MAX_PIXELS", "abc", "--max-pixels"),
    ("MAP", "xyz", "--map"),
    ("COMBINE", "xyz", "--combine"),
    ("THRESHOLD", "high", "--threshold"),
    ("TOP_K", "five", "--top-k"),
    ("PORT", "http", "--port"),
    ("GRADIO_SERVER_PORT", "http", "--port"),
    ("GENUS_FROM_NAME", "maybe", "--genus-from-name"),
]
# string-valued variables: any value is a valid default
STRING_ENV = ["MODEL_ID", "REFERENCE", "REFERENCE_SPLIT", "TAXONOMY", "GRADIO_SERVER_NAME"]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name, _, _ in BAD_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in STRING_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("argv", [[], ["--help"]])
@pytest.mark.parametrize(("name", "value", "flag"), BAD_ENV)
def test_a_bad_environment_value_is_a_clean_error_like_the_bad_flag(
    name, value, flag, argv, monkeypatch, capsys
):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert f"environment variable {name}={value!r}" in line and flag in line


def test_good_environment_values_set_the_defaults_and_flags_win(monkeypatch):
    values = {
        "MAP_MAX_POINTS": "40",
        "KEEP_UPLOADS": "120",
        "MIN_SIDE": "64",
        "IMAGE_MAX_PIXELS": "2.5e7",
        "MAP": "umap",
        "COMBINE": "mean_log",
        "THRESHOLD": "0.3",
        "TOP_K": "3",
        "PORT": "8000",
        "GENUS_FROM_NAME": "yes",
        "REFERENCE_SPLIT": "validation",
        "GRADIO_SERVER_NAME": "0.0.0.0",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    args = parse_args([])
    assert (args.map_max_points, args.keep_uploads, args.min_side, args.max_pixels) == (
        40,
        120,
        64,
        25_000_000,
    )
    assert (args.map, args.combine, args.threshold, args.top_k, args.port) == (
        "umap",
        "mean_log",
        0.3,
        3,
        8000,
    )
    assert args.genus_from_name and args.reference_split == "validation" and args.host == "0.0.0.0"
    assert parse_args(["--map", "tsne", "--top-k", "7"]).map == "tsne"
    monkeypatch.setenv("GENUS_FROM_NAME", "0")
    assert not parse_args([]).genus_from_name


def test_the_script_refuses_a_bad_environment_value_before_loading_anything(run_app_script):
    """Run as a script: the check comes before gradio's import (which reads GRADIO_SERVER_PORT itself and
    raised a traceback) and before the model and reference set load (MAP=xyz failed only after them)."""
    for name, value in (("GRADIO_SERVER_PORT", "http"), ("MAP", "xyz")):
        result = run_app_script({name: value})
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .endswith(
                f"error: environment variable {name}={value!r} (the default of "
                + (
                    "--port): invalid int value"
                    if name == "GRADIO_SERVER_PORT"
                    else "--map): invalid choice (choose from tsne, umap)"
                )
            )
        )
