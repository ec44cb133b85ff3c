"""Writing the checkpoint: the serving graph (base trunk + new layer), labels, SavedModel, report, conf.json."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .. import labels as labels_module
from .bottlenecks import FEATURE_TENSOR, FeatureExtractor
from .open_set import OpenSetScore
from .options import Options, Summary
from .quantize import write_int8
from .report import write_report


# The calibrated model's outputs: its "none of these" score [N, 1], and what it serves, [N, classes + 1]: the
# probabilities, then that score (one tensor, so that every engine converts and checks it as it does any model).
NONE_OF_THESE = "none_of_these"
WITH_NONE_OF_THESE = "final_result_and_none_of_these"


def serving_graph(extractor: FeatureExtractor, weights: np.ndarray, bias: np.ndarray, final_tensor_name: str,
                  open_set: OpenSetScore | None = None):
    """The base graph up to its features, then the new layer: Placeholder → … → final_tensor_name (Softmax); with
    an open-set score, also NONE_OF_THESE on the same features and WITH_NONE_OF_THESE, the two side by side."""
    import tensorflow as tf

    base = tf.compat.v1.GraphDef()
    base.ParseFromString(extractor.graph_bytes)
    trunk = _subgraph(base, FEATURE_TENSOR)  # drops the ImageNet head, and its final_result name with it
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(trunk, name="")
        features = graph.get_tensor_by_name(FEATURE_TENSOR + ":0")
        logits = tf.matmul(features, tf.constant(weights), name="final_layer/matmul") + tf.constant(bias)
        probabilities = tf.nn.softmax(logits, name=final_tensor_name)
        if open_set is not None:
            score = tf.identity(open_set.graph(features), name=NONE_OF_THESE)
            tf.concat([probabilities, score], 1, name=WITH_NONE_OF_THESE)
    return graph.as_graph_def()


def _subgraph(graph_def, output: str):
    """The nodes output depends on, in their original order (what TF1's deprecated extract_sub_graph does)."""
    import tensorflow as tf

    nodes = {node.name: node for node in graph_def.node}
    keep, todo = set(), [output]
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(i.lstrip("^").split(":")[0] for i in nodes[name].input)
    trunk = tf.compat.v1.GraphDef()
    trunk.versions.CopyFrom(graph_def.versions)
    trunk.node.extend(node for node in graph_def.node if node.name in keep)
    return trunk


def write_saved_model(graph_def, final_tensor_name: str, path: Path) -> None:
    """The same graph as a TF2 SavedModel: serving_default takes `images` and returns `probabilities`; a calibrated
    model's also returns its `none_of_these` score [N], and both side by side under WITH_NONE_OF_THESE (the conf's
    output_tensor, which app.py serves)."""
    import tensorflow as tf

    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    names = {"probabilities": final_tensor_name}
    if any(node.name == WITH_NONE_OF_THESE for node in graph_def.node):
        names.update({NONE_OF_THESE: NONE_OF_THESE, WITH_NONE_OF_THESE: WITH_NONE_OF_THESE})
    pruned = wrapped.prune(wrapped.graph.get_tensor_by_name("Placeholder:0"),
                           {key: wrapped.graph.get_tensor_by_name(name + ":0") for key, name in names.items()})
    module = tf.Module()
    module.pruned = pruned

    @tf.function(input_signature=[tf.TensorSpec([None, *pruned.inputs[0].shape[1:]], tf.float32, name="images")])
    def serve(images):
        outputs = dict(module.pruned(images))
        if NONE_OF_THESE in outputs:
            outputs[NONE_OF_THESE] = outputs[NONE_OF_THESE][:, 0]
        return outputs

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def write_checkpoint(options: Options, extractor: FeatureExtractor, weights: np.ndarray, bias: np.ndarray,
                     label_names: list[str], summary: Summary, history: list[dict],
                     test_set: list[tuple[Path, str]] = (), open_set: OpenSetScore | None = None) -> None:
    """Everything goes into a temporary folder beside output_dir, renamed into place only when complete. The
    engines' cache comes along: the converted models (LiteRT, OpenVINO, the int8 twin) and their checks."""
    output = Path(options.output_dir).resolve()
    previous = output.with_name(f".{output.name}.previous")
    if previous.is_dir() and not output.exists():  # a run killed between the two renames below: put it back
        os.replace(previous, output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        graph_def = serving_graph(extractor, weights, bias, options.final_tensor_name, open_set)
        (staging / options.output_graph).write_bytes(graph_def.SerializeToString())
        (staging / options.output_labels).write_text("\n".join(label_names) + "\n", encoding="utf-8")
        (staging / "label_map.pbtxt").write_text(labels_module.to_pbtxt(label_names), encoding="utf-8")
        write_saved_model(graph_def, options.final_tensor_name, staging / options.saved_model_dir)
        shutil.copy(staging / options.output_labels, staging / options.saved_model_dir / "label_map.txt")
        width, height = extractor.size
        # The input convention the base model was trained with, written out: served right even if defaults change.
        # The training photos calibrate int8 (precision "int8").
        tensorflow_conf = {"model_dir": ".", "input_width": str(width), "input_height": str(height),
                           "input_mean": 0, "input_std": 255, "resize": "squash",
                           "calibration_photos": str(Path(options.image_dir).resolve())}
        if open_set is not None:  # the probabilities, then the score: above none_of_these, none of these
            tensorflow_conf.update(output_tensor=WITH_NONE_OF_THESE, none_of_these=0.5)
        elif options.final_tensor_name != "final_result":
            tensorflow_conf["output_tensor"] = options.final_tensor_name
        if options.output_labels != "label_map.txt":
            tensorflow_conf["labels_file"] = options.output_labels
        if options.int8 and open_set is not None:
            summary.int8 = ("not made: int8 loses the \"none of these\" score (measured: the int8 models of the "
                            "tuxpaint model called none of the unseen stamps so); retrain with --no_none_of_these "
                            "for an int8 model")
        elif options.int8:
            write_int8(staging, tensorflow_conf, list(test_set), summary)
        write_report(staging / "report", summary, label_names, history)
        (staging / "conf.json").write_text(json.dumps({"http_server": {
            "exec": {"main_class": "RetrainedClassificationModel", "main_file": "retrain_inference"},
            "tensorflow": tensorflow_conf}}, indent=2) + "\n")
        if output.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(output, previous)
        os.replace(staging, output)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_archive(model_dir: Path, archive: Path) -> Path:
    """The checkpoint as one .zip to take home, under its folder's name: the frozen graph, the SavedModel, labels,
    report, conf.json and the engines' files (.litert/: the .tflite, OpenVINO's, any int8 model, their checks), so
    that `python app.py --conf <unzipped>/conf.json` serves it as it is, without converting it again. conf.json
    leaves out calibration_photos: they are on this machine, not in the zip."""
    model_dir = Path(model_dir)
    conf = json.loads((model_dir / "conf.json").read_text())
    conf["http_server"]["tensorflow"].pop("calibration_photos", None)
    partial = archive.with_name(f".{archive.name}.part")
    # Level 1: float weights hardly compress (7 % at any level), and the visitor waits for it.
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as packed:
        for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            name = f"{model_dir.name}/{path.relative_to(model_dir).as_posix()}"
            if path.relative_to(model_dir).as_posix() == "conf.json":
                packed.writestr(name, json.dumps(conf, indent=2) + "\n")
            else:
                packed.write(path, name)
    os.replace(partial, archive)
    return archive
