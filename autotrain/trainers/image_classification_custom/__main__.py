"""``python -m autotrain.trainers.image_classification_custom --training_config config.json``.

A thin pipeline: parse the arguments, validate the config, run :func:`training.run` inside AutoTrain's
``monitor``. ``monitor`` logs a failure and returns None instead of raising; :func:`train` turns that into
exit status 1, so a failed run never looks like a success.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autotrain import logger
from autotrain.trainers.common import monitor
from autotrain.trainers.image_classification_custom.params import ImageClassificationCustomParams, load_params


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m autotrain.trainers.image_classification_custom",
        description="Train an ArcFace herbarium-to-field plant classifier (AutoTrain custom trainer).",
    )
    parser.add_argument("--training_config", type=str, required=True, help="JSON file of training parameters")
    return parser.parse_args(argv)


@monitor
def _monitored_run(config: ImageClassificationCustomParams) -> dict[str, Any]:
    from autotrain.trainers.image_classification_custom import training

    result = training.run(config)
    return result if result is not None else {}


def train(config: dict | ImageClassificationCustomParams) -> dict[str, Any]:
    """Train from a dict or params; exits with status 1 when the run fails (the error is logged)."""
    params = load_params(config)
    result = _monitored_run(params)
    if result is None:  # monitor caught, logged and swallowed an exception
        logger.error("Training failed: see the error above.")
        sys.exit(1)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        config = load_params(args.training_config)
    except ValueError as err:
        logger.error(str(err))
        sys.exit(2)
    train(config)


if __name__ == "__main__":
    main()
