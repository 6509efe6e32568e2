"""The scaling benchmark's per-stage runners (benchmarks/scale_stages.py): the split of ``save_outputs``
into parts, the one-line errors, and (slow) both commands end to end on a tiny generated pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import scale_stages  # noqa: E402


def test_part_timer_counts_a_nested_call_for_the_outer_part_and_restores():
    module = types.ModuleType("fake.outputs")
    module.inner = lambda: time.sleep(0.05)
    module.outer = lambda: [module.inner(), module.inner()]
    original_inner = module.inner
    targets = {"outer_part": [(module, "outer")], "inner_part": [(module, "inner"), (module, "absent")]}
    with scale_stages.PartTimer(targets) as split:
        module.outer()
        module.inner()
    assert split.parts["outer_part"].seconds > 0
    assert split.parts["outer_part"].peak_rss_mb > 0
    assert set(split.calls) == {"outputs.outer", "outputs.inner"}
    # the two inner calls inside outer count for outer only: inner's part is its own single call
    assert split.parts["outer_part"].seconds >= 0.1
    assert 0.05 <= split.parts["inner_part"].seconds < 0.09
    assert split.missing == ["outputs.absent"]
    assert module.inner is original_inner


def test_part_timer_wraps_class_methods_and_puts_them_back():
    class Loader:
        @classmethod
        def build(cls, value):
            return (cls.__name__, value)

        @staticmethod
        def check(value):
            return value * 2

    original = Loader.__dict__["build"]
    with scale_stages.PartTimer({"index": [(Loader, "build"), (Loader, "check")]}) as split:
        assert Loader.build(3) == ("Loader", 3)
        assert Loader().check(4) == 8
    assert set(split.calls) == {"Loader.build", "Loader.check"}
    assert Loader.__dict__["build"] is original


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(BENCH / "scale_stages.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)


@pytest.mark.parametrize(
    "args, message",
    [
        (["trainer", "--dataset", "{tmp}/none", "--project", "{tmp}/p"], "dataset {tmp}/none does not exist"),
        (["app", "--model", "{tmp}/none", "--reference", "{tmp}"], "model folder {tmp}/none does not exist"),
    ],
)
def test_missing_input_is_a_one_line_error(tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as exc:
        scale_stages.main([*args, "--json", str(tmp_path / "out.json")])
    text = str(exc.value)
    assert message.format(tmp=tmp_path) in text and "\n" not in text
    assert not (tmp_path / "out.json").exists()


def _check_stages(result: dict, names: tuple[str, ...]) -> None:
    assert set(result["stages"]) == set(names)
    for name in names:
        assert result["stages"][name]["seconds"] > 0, name
        assert result["stages"][name]["peak_rss_mb"] > 0, name


@pytest.mark.slow
def test_trainer_and_app_stages_on_a_tiny_pool(tmp_path):
    # 64 px, not 32: at 32 px the embedded backbone pools some of the generated images to all-zero
    # features, and the map's t-SNE fit (cosine) fails on zero-length embeddings
    import scale_data

    pool = scale_data.generate_pool(tmp_path / "pool", 60, masters=3, workers=1, progress=False)
    csv = scale_data.write_csv(pool, 60, 6)
    dataset = tmp_path / "ds"
    built = subprocess.run(
        [sys.executable, "-m", "data_prep", "build", str(csv), "--out", str(dataset), "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert built.returncode == 0, built.stderr[-2000:]

    out = tmp_path / "trainer.json"
    trained = _run(
        "trainer", "--dataset", str(dataset), "--project", str(tmp_path / "proj"), "--image-size", "64",
        "--batch-size", "4", "--json", str(out),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = json.loads(out.read_text())
    _check_stages(result, scale_stages.TRAINER_STAGES)
    facts = result["facts"]
    assert facts["image_size"] == 64 and facts["classes"] == 6 and facts["steps"] > 0
    assert facts["train_images"] + facts["validation_images"] + facts["test_images"] == 60
    assert facts["decode_cache_bytes"] > 0 and facts["decode_cache_spilled"] is False
    assert facts["untimed"] == []

    out = tmp_path / "app.json"
    started = _run("app", "--model", str(tmp_path / "proj"), "--reference", str(dataset), "--queries", "2",
                   "--json", str(out))  # fmt: skip
    assert started.returncode == 0, started.stderr[-3000:]
    result = json.loads(out.read_text())
    _check_stages(result, scale_stages.APP_STAGES)
    # the app leaves the test split out of its default reference set (a test photo was its own neighbour)
    assert result["facts"]["reference_images"] == 60 - facts["test_images"]
    assert result["facts"]["index_from_cache"] == {"first": False, "cached": True}
    assert result["facts"]["map_from_cache"] == {"first": False, "cached": True}
    assert result["stages"]["app_query"]["queries"] == 2


def test_every_timed_function_of_save_outputs_exists():
    # the evaluation splits' pass was wrapped under a renamed method and went uncounted (into "save")
    for part, targets in scale_stages.save_parts().items():
        for owner, name in targets:
            assert callable(getattr(owner, name, None)), f"{part}: {owner.__name__}.{name} does not exist"
