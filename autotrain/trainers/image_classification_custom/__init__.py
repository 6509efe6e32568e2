"""Herbarium-to-field image classification: an ArcFace-headed timm/transformers backbone trained with AutoTrain.

Run with ``python -m autotrain.trainers.image_classification_custom --training_config config.json``.
The model lives in ``configuration_arcface.py`` and ``modeling_arcface.py`` (inference code only: torch
and transformers, timm imported only for a timm backbone), the pair copied into every saved model folder;
the build-time code that creates and saves models is in ``backbones.py`` and ``model_io.py``.
"""
