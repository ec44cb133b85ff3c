"""Model formats: detect what model_dir holds and load it as one callable, images [N,H,W,3] → probabilities [N,C].

Each loader also says what it knows of the model's input convention (a Keras Rescaling layer, a uint8 input)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from .images import ENCODED_INPUT, FLOAT_INPUTS, INTEGER_INPUTS, InputConvention, to_encoded
from . import keras_files
from .labels import packed_labels
from .quiet import import_tensorflow
from .runtime import Runtime

log = logging.getLogger(__name__)

FROZEN_GRAPH = "frozen graph"
SAVED_MODEL = "SavedModel"
KERAS = "Keras"
KERAS_H5 = "Keras .h5"
TFLITE = "TFLite"
ONNX = "ONNX"

# retrain.py's tensor names, and what UAI code feeds and fetches.
DEFAULT_INPUT = "Placeholder"
DEFAULT_OUTPUT = "final_result"


class ModelError(ValueError):
    """A model_dir that holds no loadable model, or a model whose inputs and outputs cannot be identified."""


def load(model_dir: str | Path, size: tuple[int, int], input_tensor: str | None = None,
         output_tensor: str | None = None, extra_columns: int = 0) -> Runtime:
    """Loads the model in model_dir (a folder, or one model file), whatever its format, and probes it once at
    size=(width, height). extra_columns: how many of its last outputs are not class probabilities (a "none of
    these" score)."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise ModelError(f"model_dir {model_dir} does not exist")
    loader, path = detect(model_dir)
    runtime = loader(path, input_tensor, output_tensor)
    runtime.extra_columns = extra_columns
    _probe(runtime, runtime.input_size or size)  # a model that fixes its size is probed (and served) at it
    return runtime


def latest_version(model_dir: Path) -> tuple[Path, int | None]:
    """TensorFlow Serving's layout: numbered version folders (1/, 2/, …) in model_dir, the highest one served.
    A model_dir without them is served as it is (version None)."""
    versions = [p for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit()] \
        if Path(model_dir).is_dir() else []
    if not versions:
        return Path(model_dir), None
    newest = max(versions, key=lambda p: int(p.name))
    return newest, int(newest.name)


def detect(model_dir: Path) -> tuple[Callable[..., Runtime], Path]:
    """The format from the folder's contents: a SavedModel, a single .keras, .h5 or .tflite file, or a frozen
    GraphDef (.pb); or model_dir is that one file itself."""
    if model_dir.is_file():
        loader = dict(FILE_LOADERS).get(model_dir.suffix.lower())
        if loader is None:
            raise ModelError(f"{model_dir} is not a model file: give a .pb, .keras, .h5, .tflite or .onnx file, or "
                             "a folder")
        return loader, model_dir
    if (model_dir / "saved_model.pb").is_file():
        return load_saved_model, model_dir
    for suffix, loader in FILE_LOADERS[:-1]:  # a folder's .pb files are looked at last
        files = sorted(model_dir.glob(f"*{suffix}"))
        if len(files) == 1:
            return loader, files[0]
        if len(files) > 1:
            raise ModelError(f"{model_dir} holds {len(files)} {suffix} files ({', '.join(p.name for p in files)}); "
                             "keep the one to serve, or put each in its own version folder")
    graphs = sorted(model_dir.glob("*.pb"))
    preferred = model_dir / "frozen_inference_graph.pb"
    if preferred in graphs:
        return load_frozen_graph, preferred
    if len(graphs) == 1:
        return load_frozen_graph, graphs[0]
    found = ", ".join(p.name for p in sorted(model_dir.iterdir())) or "nothing"
    raise ModelError(f"no model found in {model_dir} (found: {found}); expected frozen_inference_graph.pb, "
                     "a SavedModel (saved_model.pb + variables/), or one .keras, .h5, .tflite or .onnx file")


def load_frozen_graph(path: Path, input_tensor: str | None = None, output_tensor: str | None = None) -> Runtime:
    """A TF1 frozen GraphDef, run as a pruned TF2 concrete function (no Session, no per-call graph building)."""
    tf = import_tensorflow()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as exc:
        raise ModelError(f"{path} is not a TensorFlow GraphDef: {exc}") from None
    input_name, output_name = _graph_io(graph_def, path, input_tensor, output_tensor)

    def import_graph():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(import_graph, [])
    try:
        graph_input = wrapped.graph.get_tensor_by_name(input_name + ":0")
        graph_output = wrapped.graph.get_tensor_by_name(output_name + ":0")
    except (KeyError, ValueError) as exc:
        raise ModelError(f"{path}: {exc}") from None
    return Runtime(format=FROZEN_GRAPH, path=path, function=wrapped.prune(graph_input, graph_output),
                   input_size=_static_size(graph_input.shape), keep=wrapped,
                   **_input_type(graph_input.dtype.name, path), **_batch_of(graph_input.shape, path))


def _graph_io(graph_def, path: Path, input_tensor: str | None, output_tensor: str | None) -> tuple[str, str]:
    """The input and output op names: as conf.json names them, else retrain.py's, else the only candidates."""
    nodes = {node.name: node for node in graph_def.node}

    tf = import_tensorflow()

    def op_name(name: str) -> str:
        return name.split(":")[0]

    def pick(kind: str, wanted: str | None, default: str, candidates: list[str]) -> str:
        if wanted:
            if op_name(wanted) not in nodes:
                raise ModelError(f"{path} has no op named {op_name(wanted)!r} (conf key {kind}_tensor)")
            return op_name(wanted)
        if default in nodes:
            return default
        if len(candidates) == 1:
            log.info("%s: no %r op; using the only candidate %s %r", path.name, default, kind, candidates[0])
            return candidates[0]
        raise ModelError(f"{path} has no {default!r} op and {len(candidates)} candidate {kind}s "
                         f"({', '.join(candidates[:8]) or 'none'}); name it with conf key {kind}_tensor")

    float_4d_placeholders = [
        n.name for n in graph_def.node if n.op == "Placeholder" and n.attr["dtype"].type == tf.float32.as_datatype_enum
        and (not n.attr["shape"].shape.dim or len(n.attr["shape"].shape.dim) == 4)]
    softmaxes = [n.name for n in graph_def.node if n.op == "Softmax"]
    return (pick("input", input_tensor, DEFAULT_INPUT, float_4d_placeholders),
            pick("output", output_tensor, DEFAULT_OUTPUT, softmaxes))


def load_saved_model(path: Path, input_tensor: str | None = None, output_tensor: str | None = None) -> Runtime:
    """A TF2 SavedModel's serving_default signature (a single image input; the named or single output)."""
    tf = import_tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
    except KeyError:
        raise ModelError(f"the SavedModel {path} has no serving_default signature") from None
    except Exception as exc:
        raise ModelError(f"cannot load the SavedModel {path}: {exc}") from None
    inputs = signature.structured_input_signature[1]
    input_key = _only(input_tensor, sorted(inputs), path, "input")
    output_key = _only(output_tensor, sorted(signature.structured_outputs), path, "output")
    shape, dtype = inputs[input_key].shape, inputs[input_key].dtype
    typed, batch = _input_type(dtype.name, path), _batch_of(shape, path)

    scalar = shape.rank == 0  # one encoded image a call (a scalar string): [1] → [1, classes], image by image

    def call(images):
        if scalar:
            return tf.reshape(signature(**{input_key: images[0]})[output_key], [1, -1])
        return signature(**{input_key: images})[output_key]

    if scalar:
        batch, shape = {"fixed_batch": 1}, tf.TensorShape([1])
    # One tensor in, one tensor out, as for the other formats (and as LiteRT's converter wants it); in the
    # signature's own dtype (a TF Serving export often takes uint8 images, or the encoded image as a string).
    function = tf.function(call).get_concrete_function(tf.TensorSpec([batch.get("fixed_batch"), *shape[1:]], dtype))
    # keep: the signature holds only weak references to the SavedModel's variables.
    return Runtime(format=SAVED_MODEL, path=path, function=function, input_size=_static_size(shape), keep=loaded,
                   **typed, **batch)


def load_keras(path: Path, input_tensor: str | None = None, output_tensor: str | None = None) -> Runtime:
    """A Keras .keras file, or a Keras 2 .h5 (Teachable Machine's keras_model.h5 among them), called through one
    compiled tf.function (model.predict costs ~60 ms per call)."""
    import keras  # imported here: only these formats need it

    tf = import_tensorflow()

    try:
        # Keras 2 wrote "groups": 1 into DepthwiseConv2D's config (Teachable Machine's files have it); Keras 3
        # refuses the key. The layer below drops it: the one known incompatibility, fixed where it is read.
        model = keras.saving.load_model(path, compile=False,
                                        custom_objects={"DepthwiseConv2D": keras_files.depthwise_without_groups(keras)})
    except Exception as exc:
        raise ModelError(f"cannot load the Keras model {path}: {exc}") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"the Keras model {path} must have one input and one output")
    shape, dtype = model.inputs[0].shape, tf.as_dtype(model.inputs[0].dtype)
    typed, batch = _input_type(dtype.name, path), _batch_of(shape, path)
    function = tf.function(lambda images: model(images, training=False)).get_concrete_function(
        tf.TensorSpec([batch.get("fixed_batch"), *shape[1:]], dtype))
    if "convention" not in typed:  # a float input: what its first layers say of it
        typed["convention"], typed["convention_source"] = keras_files.convention(model)
    return Runtime(format=KERAS_H5 if path.suffix == ".h5" else KERAS, path=path, function=function,
                   input_size=_static_size(shape), keep=model, **typed, **batch)


def _input_type(dtype: str, path: Path) -> dict:
    """Runtime's fields for the model's input type: the dtype, and for an integer input (raw pixels) the input
    convention that says so. A type no photo maps to is refused."""
    if dtype in FLOAT_INPUTS:
        return {"input_dtype": dtype}
    if dtype in INTEGER_INPUTS:
        return {"input_dtype": dtype, "convention": InputConvention(dtype=dtype),
                "convention_source": f"its input is {dtype}"}
    if dtype == ENCODED_INPUT:
        return {"input_dtype": dtype, "convention": InputConvention(dtype=dtype),
                "convention_source": "its input is the encoded image (a string)"}
    raise ModelError(f"{path} takes {dtype} input; the image inputs served are "
                     f"{', '.join(INTEGER_INPUTS + FLOAT_INPUTS)}, and {ENCODED_INPUT} (encoded images)")


def load_tflite(path: Path, input_tensor: str | None = None, output_tensor: str | None = None) -> Runtime:
    """A .tflite file, float or quantized (int8/uint8), run by LiteRT as it is; labels from the labels file packed
    into it (what TFLite metadata writers do), when there is one."""
    from .engines.litert import LiteRTPredictor, threads

    try:
        predictor = LiteRTPredictor(path, threads())
    except Exception as exc:
        raise ModelError(f"cannot load the TFLite model {path}: {exc}") from None
    shape = predictor.input_shape
    uint8 = predictor.input_dtype == np.uint8
    return Runtime(format=TFLITE, path=path, function=None, input_size=_static_size(shape), reference="litert",
                   engine=f"LiteRT XNNPACK, {predictor.threads} threads", predict=predictor,
                   input_dtype="uint8" if uint8 else "float32", labels=packed_labels(path),
                   convention=InputConvention(dtype="uint8") if uint8 else None,
                   convention_source="its input is uint8" if uint8 else "")


def load_onnx(path: Path, input_tensor: str | None = None, output_tensor: str | None = None) -> Runtime:
    """An .onnx file (PyTorch's torch.onnx.export, timm's, Hugging Face optimum's), run by ONNX Runtime: NCHW
    (PyTorch's layout) or NHWC, as its input's shape says; the service's NHWC batches are transposed for it."""
    from .engines import onnx_runtime

    try:
        session = onnx_runtime.session(path)
    except ImportError:
        raise ModelError(f"{path} is an ONNX model, and ONNX Runtime, which checks and converts it, is not "
                         "installed here: pip install -r requirements.txt") from None
    except Exception as exc:
        raise ModelError(f"cannot load the ONNX model {path}: {exc}") from None
    input_name = _only(input_tensor, [i.name for i in session.get_inputs()], path, "input")
    output_name = _only(output_tensor, [o.name for o in session.get_outputs()], path, "output")
    given = next(i for i in session.get_inputs() if i.name == input_name)
    dims = [d if isinstance(d, int) and d > 0 else None for d in given.shape]  # named dims ("batch") are dynamic
    if len(dims) != 4 or 3 not in (dims[1], dims[3]):
        raise ModelError(f"{path}'s input {input_name!r} has shape {given.shape}; expected images, [N, 3, H, W] "
                         "(NCHW) or [N, H, W, 3] (NHWC)")
    nchw = dims[1] == 3 and dims[3] != 3
    nhwc = [dims[0], dims[2], dims[3], dims[1]] if nchw else dims
    predictor = onnx_runtime.ONNXRuntimePredictor(session, input_name, output_name, nchw)
    return Runtime(format=f"{ONNX} {'NCHW' if nchw else 'NHWC'}", path=path, function=None,
                   input_size=_static_size(nhwc), engine=predictor.engine, predict=predictor,
                   reference=onnx_runtime.NAME, nchw=nchw, **_input_type(predictor.input_dtype, path),
                   **_batch_of(nhwc, path))


# The model files a path may name, by suffix.
FILE_LOADERS = ((".keras", load_keras), (".h5", load_keras), (".tflite", load_tflite), (".onnx", load_onnx),
                (".pb", load_frozen_graph))


def _only(wanted: str | None, keys: list[str], path: Path, kind: str) -> str:
    if wanted:
        if wanted not in keys:
            raise ModelError(f"{path} has no {kind} named {wanted!r}; it has {keys} (conf key {kind}_tensor)")
        return wanted
    if len(keys) != 1:
        raise ModelError(f"{path} has {len(keys)} {kind}s {keys}; name the one to use with conf key {kind}_tensor")
    return keys[0]


def _batch_of(shape, path: Path) -> dict:
    """Runtime's fixed_batch for the model's input shape: {} for a dynamic batch, 1 for a batch-1 export; a
    batch fixed at more is refused (no batch of requests could be counted on to fill it)."""
    dims = list(shape) if shape is not None and getattr(shape, "rank", 4) is not None else []
    batch = dims[0] if dims else None
    if batch is None or batch == -1:
        return {}
    if batch == 1:
        return {"fixed_batch": 1}
    raise ModelError(f"{path} takes batches of exactly {batch} images; export it with a dynamic batch (None) or 1")


def _static_size(shape) -> tuple[int, int] | None:
    """(width, height) of an NHWC shape whose height and width are fixed, else None."""
    dims = list(shape) if shape is not None and getattr(shape, "rank", 4) is not None else []
    if len(dims) != 4:
        return None
    height, width = dims[1], dims[2]
    return (int(width), int(height)) if width and height and width > 0 and height > 0 else None


def _probe(runtime: Runtime, size: tuple[int, int]) -> None:
    """One inference on a grey image: learns the class count, warms the graph up, checks the output's shape."""
    width, height = size
    if runtime.input_dtype == ENCODED_INPUT:
        grey = to_encoded(np.full((height, width, 3), 128, np.uint8))[None]
    else:
        grey = np.full((1, height, width, 3), 128 if runtime.input_dtype in INTEGER_INPUTS else 0.5,
                       runtime.input_dtype)
    try:
        out = np.asarray(runtime.predict(grey))
    except Exception as exc:
        raise ModelError(f"{runtime.path} fails on a {width}×{height} RGB image: {exc}") from None
    if out.ndim != 2 or out.shape[0] != 1:
        raise ModelError(f"{runtime.path} outputs shape {out.shape}; expected [batch, classes]")
    runtime.num_classes = out.shape[1] - runtime.extra_columns
    if runtime.num_classes < 1:
        raise ModelError(f"{runtime.path} outputs {out.shape[1]} values: not {runtime.extra_columns} besides the "
                         "class probabilities")
    out = out[:, :runtime.num_classes]
    is_distribution = out.min() >= 0 and abs(float(out.sum()) - 1.0) < 1e-3
    if not is_distribution:
        log.warning("%s outputs logits, not probabilities: softmax is applied to its output", runtime.path)
        runtime.applies_softmax = True
