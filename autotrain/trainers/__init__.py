"""Overlay of ``autotrain.trainers``: see ``autotrain/__init__.py``."""

from autotrain import join_upstream

join_upstream(globals(), "autotrain", "trainers")
