"""The run's report: metrics.json, misclassified.json, the confusion matrix and training curve, a text summary."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .options import Summary


def write_report(folder: Path, summary: Summary, label_names: list[str], history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    (folder / "misclassified.json").write_text(json.dumps(summary.misclassified, indent=2) + "\n")

    matrix = np.array(summary.confusion_matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(label_names) + 3, 1.2 * len(label_names) + 2.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Test set: {summary.test_accuracy:.1%} accurate ({matrix.sum()} photos)")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(folder / "confusion_matrix.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["train_accuracy"] for h in history], label="training accuracy (batch)")
    ax.plot(steps, [h["validation_accuracy"] for h in history], label="validation accuracy")
    ax.plot(steps, [h["loss"] for h in history], label="training loss")
    ax.set_xlabel("step")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("Training")
    fig.tight_layout()
    fig.savefig(folder / "training_curve.png", dpi=100)
    plt.close(fig)


def none_of_these_line(measured: dict) -> str:
    """What the "none of these" calibration gave, in a line: the shares called none of these, or why there is none."""
    if not measured:
        return "None of these: not calibrated (--no_none_of_these)."
    if not measured["calibrated"]:
        return f"None of these: not calibrated ({measured['why']})."
    line = (f"None of these: calibrated on {measured['calibration_photos']} held-out photos; it calls "
            f"{measured['test_rejected']:.0%} of the {measured['test_photos']} test photos none of these")
    if "other_photos" in measured:
        line += (f", and {measured['other_rejected']:.0%} of the {measured['other_photos']} other photos "
                 f"(AUROC {measured['auroc']:.3f})")
    return line + "."


def format_summary(summary: Summary) -> str:
    classes = ", ".join(f"{label} {count}" for label, count in summary.classes.items())
    lines = [f"Trained on {sum(summary.classes.values())} photos in {len(summary.classes)} classes ({classes}).",
             f"Split: {summary.split['training']} training, {summary.split['validation']} validation, "
             f"{summary.split['testing']} testing. Bottlenecks: {summary.bottlenecks_computed} computed, "
             f"{summary.bottlenecks_cached} from the cache. {summary.training_steps} training steps."]
    if summary.skipped:
        lines.append(f"Skipped {len(summary.skipped)} unreadable file(s): "
                     + ", ".join(Path(s["file"]).name for s in summary.skipped))
    tested = sum(c["test_images"] for c in summary.per_class.values())
    lines.append(f"Test accuracy: {summary.test_accuracy:.1%} ({tested} photos).")
    if summary.int8:
        int8 = summary.int8_test_accuracy
        lines.append(f"int8 model: {summary.int8}" + (f"; test accuracy {int8:.1%}." if int8 == int8 else "."))
    lines.append(none_of_these_line(summary.none_of_these))
    for label, c in summary.per_class.items():
        precision = "–" if c["precision"] is None else f"{c['precision']:.0%}"
        recall = "–" if c["recall"] is None else f"{c['recall']:.0%}"
        lines.append(f"  {label:<20} precision {precision:>4}  recall {recall:>4}  ({c['test_images']} test photos)")
    lines.append(f"Wrote {summary.output_dir} in {summary.seconds:.0f} s (report in report/). "
                 f"Serve it: python app.py --conf {summary.output_dir}/conf.json")
    return "\n".join(lines)
