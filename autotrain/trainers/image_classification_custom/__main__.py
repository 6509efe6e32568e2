"""``python -m autotrain.trainers.image_classification_custom --training_config config.json``.

A thin pipeline: parse the arguments, validate the config, run :func:`training.run` inside AutoTrain's
``monitor``. ``monitor`` logs a failure and returns None instead of raising; :func:`train` turns that into
exit status 1, so a failed run never looks like a success. A data problem the user must fix
(:class:`splits.DataInputError`: a wrong folder layout, unlabelled images) ends with one line that
names the folder and what to do, and exit status 2; its traceback is logged only with ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autotrain import logger
from autotrain.trainers.common import monitor
from autotrain.trainers.image_classification_custom.params import ImageClassificationCustomParams, load_params

_DEBUG = {"traceback": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m autotrain.trainers.image_classification_custom",
        description="Train an ArcFace herbarium-to-field plant classifier (AutoTrain custom trainer).",
    )
    parser.add_argument("--training_config", type=str, required=True, help="JSON file of training parameters")
    parser.add_argument("--debug", action="store_true", help="also log the traceback of data input errors")
    return parser.parse_args(argv)


@monitor
def _monitored_run(config: ImageClassificationCustomParams) -> dict[str, Any] | Exception:
    from autotrain.trainers.image_classification_custom import training
    from autotrain.trainers.image_classification_custom.splits import DataInputError

    try:
        result = training.run(config)
    except DataInputError as err:  # the user's data, not a crash: returned, so that train() exits 2
        if _DEBUG["traceback"]:
            logger.opt(exception=err).debug("data input error")
        return err
    return result if result is not None else {}


def train(config: dict | ImageClassificationCustomParams) -> dict[str, Any]:
    """Train from a dict or params.

    Exits with status 1 when the run fails (the error is logged), and 2 with a one-line message when
    the data must be fixed first (:class:`splits.DataInputError`).
    """
    params = load_params(config)
    result = _monitored_run(params)
    if result is None:  # monitor caught, logged and swallowed an exception
        logger.error("Training failed: see the error above.")
        sys.exit(1)
    if isinstance(result, Exception):
        logger.error(f"error: {result}")
        sys.exit(2)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _DEBUG["traceback"] = args.debug
    try:
        config = load_params(args.training_config)
    except ValueError as err:
        logger.error(str(err))
        sys.exit(2)
    train(config)


if __name__ == "__main__":
    main()
