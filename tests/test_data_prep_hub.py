"""--push-to-hub with HfApi and DatasetDict.push_to_hub replaced by fakes: no network, token never printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from datasets import DatasetDict

from data_prep import DataPrepError, build_dataset
from data_prep import hub as hub_module
from data_prep.cli import main
from data_prep.testing import make_folder_tree

SECRET = "hf_test_secret_token_123"


def _build_and_push(root: Path, out: Path, repo: str) -> list[str]:
    """``python -m data_prep build ROOT --out OUT --push-to-hub REPO`` arguments (quiet, one process)."""
    return ["build", str(root), "--out", str(out), "--push-to-hub", repo, "--quiet", "--num-proc", "1"]


class FakeApi:
    """Records calls of the HfApi methods that push_dataset uses."""

    instances: list[FakeApi] = []

    def __init__(self, token: str | None = None, **_: Any) -> None:
        self.token = token
        self.calls: list[tuple[str, dict[str, Any]]] = []
        FakeApi.instances.append(self)

    def create_repo(self, repo_id: str, **kw: Any) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"https://huggingface.co/datasets/{repo_id}"

    def create_commit(self, repo_id: str, operations: list[Any], **kw: Any) -> None:
        files = {op.path_in_repo: op for op in operations}
        self.calls.append(("create_commit", {"repo_id": repo_id, "files": files, **kw}))


@pytest.fixture()
def pushes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    recorded: list[dict[str, Any]] = []

    def fake_push(self: DatasetDict, repo_id: str, **kw: Any) -> None:
        recorded.append({"repo_id": repo_id, "splits": sorted(self), **kw})

    monkeypatch.setattr(DatasetDict, "push_to_hub", fake_push)
    monkeypatch.setattr(hub_module, "HfApi", FakeApi)
    FakeApi.instances.clear()
    return recorded


def test_cli_push_private_by_default_token_from_env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pushes: list[dict[str, Any]],
) -> None:
    root = make_folder_tree(tmp_path / "in", {"A": (2, 3, 1), "B": (2, 0, 1)})
    monkeypatch.setenv("HF_TOKEN", SECRET)
    code = main(_build_and_push(root, tmp_path / "out", "me/plants"))
    assert code == 0
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "pushed to https://huggingface.co/datasets/me/plants (private)" in captured.out

    assert pushes == [
        {
            "repo_id": "me/plants",
            "splits": ["test", "train", "validation"],
            "private": True,
            "token": SECRET,
            "commit_message": "data_prep: upload dataset",
        }
    ]
    (api,) = FakeApi.instances
    kinds = [name for name, _ in api.calls]
    assert kinds == ["create_repo", "create_commit"]  # the card goes first; push_to_hub keeps its text
    assert api.calls[0][1]["private"] is True and api.calls[0][1]["repo_type"] == "dataset"
    files = api.calls[1][1]["files"]
    assert set(files) == {"README.md", "prep_report.json", "dataset_balance.png"}
    card = files["README.md"].path_or_fileobj.decode()
    assert "task_categories:" in card and "Classes without field training images (1):** B" in card
    assert "![dataset balance](dataset_balance.png)" in card and "Field share" in card


def test_public_flag_and_missing_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pushes: list[dict[str, Any]]
) -> None:
    root = make_folder_tree(tmp_path / "in", {"A": (2, 2, 0)})
    dsd, report = build_dataset(root, tmp_path / "out", num_proc=1, progress=False)
    url = hub_module.push_dataset(dsd, "org/x", report, private=False, token=SECRET)
    assert url.endswith("org/x") and pushes[-1]["private"] is False
    assert FakeApi.instances[-1].calls[0][1]["private"] is False

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub_module, "get_token", lambda: None)
    with pytest.raises(DataPrepError, match="no Hugging Face token"):
        hub_module.push_dataset(dsd, "org/x", report)


def test_push_failure_is_one_line_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pushes: list[dict[str, Any]],
) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    def refuse(self: FakeApi, repo_id: str, **kw: Any) -> str:
        raise HfHubHTTPError("403 Forbidden: no write access")

    monkeypatch.setattr(FakeApi, "create_repo", refuse)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    root = make_folder_tree(tmp_path / "in", {"A": (2, 2, 0)})
    code = main(_build_and_push(root, tmp_path / "out", "me/x"))
    assert code == 2
    err = capsys.readouterr().err
    assert "push to me/x failed" in err and "403" in err and SECRET not in err and err.count("\n") == 1
    assert (tmp_path / "out" / "dataset_dict.json").is_file() and pushes == []
