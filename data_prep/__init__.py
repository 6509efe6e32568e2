"""Herbarium + field images -> the project's validated ``datasets.DatasetDict``.

Public API (imported lazily, so that worker processes and ``--help`` stay light):

- :func:`build_dataset` (``data_prep.build``): folders / PlantCLEF lists / CSV -> ``(DatasetDict, report)``.
- :func:`generate_sample` (``data_prep.sample``): the embedded synthetic herbarium + field dataset.
- :func:`create_features`: the dataset schema (``data_prep.contract.dataset_features``); :class:`DataPrepError`,
  :class:`StrictModeError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from data_prep.build import StrictModeError, build_dataset, create_features
    from data_prep.layouts import DataPrepError
    from data_prep.sample import generate_sample

_EXPORTS = {
    "build_dataset": "data_prep.build",
    "create_features": "data_prep.build",
    "StrictModeError": "data_prep.build",
    "DataPrepError": "data_prep.layouts",
    "generate_sample": "data_prep.sample",
}
__all__ = ["DataPrepError", "StrictModeError", "build_dataset", "create_features", "generate_sample"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'data_prep' has no attribute {name!r}")
