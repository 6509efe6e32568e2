"""Herbarium-to-field image classification: an ArcFace-headed timm/transformers backbone trained with AutoTrain.

Run with ``python -m autotrain.trainers.image_classification_custom --training_config config.json``.
The model lives in ``modeling_arcface.py``, which depends only on torch, transformers and timm and is
copied into every saved model folder.
"""
