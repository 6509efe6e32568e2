"""Multi-process runs: the process group's timeout covers the main rank writing the outputs."""

from __future__ import annotations

from datetime import timedelta

from autotrain.trainers.image_classification_custom import arcface_trainer, stages
from autotrain.trainers.image_classification_custom.params import ImageClassificationCustomParams


class _FakeState:
    is_main_process = True
    num_processes = 1
    kwargs: dict = {}

    def __init__(self, **kwargs):
        type(self).kwargs = kwargs


def test_process_group_waits_longer_than_nccls_ten_minutes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # NCCL's default is 10 minutes: at the end of a large run the other ranks wait longer than that
    # for the main one's test evaluation and map, and the launch failed.
    monkeypatch.setattr(stages, "PartialState", _FakeState)
    config = ImageClassificationCustomParams(data_path=str(tmp_path), project_name="p")
    stages.start_run(config)
    assert _FakeState.kwargs["timeout"] == stages.PROCESS_GROUP_TIMEOUT >= timedelta(hours=1)


def test_trainer_arguments_use_the_same_timeout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ImageClassificationCustomParams(data_path=str(tmp_path), project_name="p")
    ctx = stages.RunContext(config, _FakeState())
    args = arcface_trainer.training_arguments(ctx, None, 10, None)
    assert args.ddp_timeout == stages.PROCESS_GROUP_TIMEOUT.total_seconds()
