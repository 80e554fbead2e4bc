"""Trainer: Mask R-CNN training, evaluation, the MLflow model registry and promotion."""
