"""Retraining: a folder of labelled photos → a servable checkpoint_dir, in TensorFlow Hub retrain.py's workflow.

    python -m classifier.retrain --image_dir photos/ --output_dir my_model/

One subfolder of image_dir per class. The embedded EfficientNet-Lite0 turns each photo into a 1280-d
"bottleneck" (cached on disk by file content); a new softmax layer is trained on those; the result is written
as a frozen graph, labels, a SavedModel and a report, into a temporary folder renamed into place at the end.

  options.py      the run's options (retrain.py's flags), its summary and its error
  data.py         class folders, the stable split, uploaded zips, flagged photos
  bottlenecks.py  the base model's features per photo, cached by content
  training.py     the run: bottlenecks → new softmax layer → evaluation → checkpoint
  checkpoint.py   the serving graph, SavedModel and conf.json, written atomically
  report.py       metrics, confusion matrix, training curve, the text summary
"""
from .checkpoint import write_archive, write_saved_model
from .data import extract_zip, list_images, normalise_label, read_flagged, split_of, write_labelled
from .options import Options, RetrainError, Summary
from .report import format_summary
from .training import retrain

__all__ = ["retrain", "Options", "Summary", "RetrainError", "format_summary", "extract_zip", "list_images",
           "normalise_label", "read_flagged", "split_of", "write_labelled", "write_archive",
           "write_saved_model"]
