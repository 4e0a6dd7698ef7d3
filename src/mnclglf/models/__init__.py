"""Backbone and heads."""

from mnclglf.models.heads import Predictor, Projector
from mnclglf.models.resnet import ResNet18

__all__ = ["Predictor", "Projector", "ResNet18"]
