"""The module conf.json names as main_file, as in UAI Inference: it exports the class that serves the model."""
from classifier.model import RetrainedClassificationModel

__all__ = ["RetrainedClassificationModel"]
