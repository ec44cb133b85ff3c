"""Retraining: real photos (Debian's tuxpaint-stamps-default) → a servable checkpoint, with its calibrated "none
of these" verdict; bad data; the cache."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from gradio_client import Client, handle_file
from PIL import Image
from starlette.responses import JSONResponse

import classifier
import classifier.__main__
from classifier import retrain
from conftest import PHOTOS, ROOT, encode, require_debian_package, solid, write_colour_graph
from in_process import InProcessServer
from classifier.retrain.bottlenecks import FEATURE_TENSOR
from classifier.retrain.data import split_of

STAMPS = Path("/usr/share/tuxpaint/stamps")
TUXPAINT_CLASSES = {"mammals": "animals/mammals", "birds": "animals/birds", "fruit": "food/fruit",
                    "flowers": "plants/flowers"}
# Categories the model never sees: what "none of these" must catch (the measurement, 185 stamps).
UNSEEN = ["vehicles", "space", "sports", "household", "town", "people"]


@pytest.fixture(scope="module")
def tuxpaint_dir(tmp_path_factory) -> Path:
    require_debian_package(STAMPS, "tuxpaint-stamps-default")
    folder = tmp_path_factory.mktemp("tuxpaint")
    for name, source in TUXPAINT_CLASSES.items():
        (folder / "classes" / name).parent.mkdir(exist_ok=True)
        (folder / "classes" / name).symlink_to(STAMPS / source)
    for name in UNSEEN:
        (folder / "other" / name).mkdir(parents=True)
        for stamp in (STAMPS / name).rglob("*.png"):
            (folder / "other" / name / "_".join(stamp.relative_to(STAMPS / name).parts)).symlink_to(stamp)
    return folder


@pytest.fixture(scope="module")
def trained(tuxpaint_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    # No int8 twin: quantizing and checking it is 35 of a 58 s run; a test below makes one on a tiny base.
    options = retrain.Options(image_dir=tuxpaint_dir / "classes", output_dir=out / "model",
                              bottleneck_dir=out / "bottlenecks", int8=False, other_dir=tuxpaint_dir / "other")
    return options, retrain.retrain(options)


def test_retrain_on_real_photos_is_accurate_and_servable(trained):
    options, summary = trained
    assert summary.classes == {"birds": 38, "flowers": 25, "fruit": 41, "mammals": 67}
    assert sum(summary.split.values()) == 171 and summary.split["testing"] > 10
    assert summary.test_accuracy >= 0.90, retrain.format_summary(summary)

    out = options.output_dir
    assert {p.name for p in out.iterdir()} == {"frozen_inference_graph.pb", "label_map.txt", "label_map.pbtxt",
                                               "saved_model", "report", "conf.json"}
    assert (out / "label_map.txt").read_text() == "birds\nflowers\nfruit\nmammals\n"
    report = out / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["test_accuracy"] == summary.test_accuracy and set(metrics["per_class"]) == set(summary.classes)
    assert all({"precision", "recall"} <= set(c) for c in metrics["per_class"].values())
    for picture in ("confusion_matrix.png", "training_curve.png"):
        assert Image.open(report / picture).size[0] > 300
    assert len(json.loads((report / "misclassified.json").read_text())) == round(
        (1 - summary.test_accuracy) * summary.split["testing"])

    assert "int8 model" not in retrain.format_summary(summary)

    model = classifier.load(out / "conf.json")  # pointed at the new folder, nothing else changed
    assert model.runtime.format == "frozen graph" and model.labels == ["birds", "flowers", "fruit", "mammals"]
    assert model.execute([PHOTOS / "chelsea.png"], 1)[0][0][0] == "mammals"


def test_frozen_graph_follows_retrain_conventions(trained):
    import tensorflow as tf

    options, _ = trained
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((options.output_dir / "frozen_inference_graph.pb").read_bytes())
    nodes = {n.name: n for n in graph_def.node}
    assert nodes["Placeholder"].op == "Placeholder" and nodes["final_result"].op == "Softmax"
    assert [d.size for d in nodes["Placeholder"].attr["shape"].shape.dim] == [-1, 224, 224, 3]
    # The conf says how the graph is fed, so a change of defaults cannot change how it is served.
    conf = json.loads((options.output_dir / "conf.json").read_text())["http_server"]["tensorflow"]
    assert (conf["input_mean"], conf["input_std"], conf["resize"]) == (0, 255, "squash")


def test_saved_model_gives_the_same_answers(trained, tmp_path):
    options, _ = trained
    frozen = classifier.load(options.output_dir / "conf.json")
    conf = json.loads((options.output_dir / "conf.json").read_text())
    # TensorFlow runs the export itself: the SavedModel's answers are the subject, not the engines' conversions of
    # it (converting and timing three engines took most of this test's ~30 s).
    conf["http_server"]["tensorflow"].update(model_dir=str(options.output_dir / "saved_model"), runtime="tensorflow")
    (tmp_path / "conf.json").write_text(json.dumps(conf))
    saved = classifier.load(tmp_path / "conf.json")
    assert saved.runtime.format == "SavedModel"
    photos = [PHOTOS / "chelsea.png", PHOTOS / "coffee.png", PHOTOS / "rocket.jpg"]
    for a, b in zip(frozen.execute(photos, 3), saved.execute(photos, 3)):
        assert a[0][0] == b[0][0] and a[0][1] == pytest.approx(b[0][1], abs=1e-5)


def test_a_rerun_reuses_the_bottleneck_cache(trained, tmp_path):
    options, first = trained
    again = retrain.retrain(retrain.Options(image_dir=options.image_dir, output_dir=tmp_path / "again",
                                            bottleneck_dir=options.bottleneck_dir, how_many_training_steps=50,
                                            int8=False))  # the int8 twin: test_train_tab.py; here, the cache
    assert (again.bottlenecks_computed, again.bottlenecks_cached) == (0, 171)
    assert first.bottlenecks_computed == 171


def test_none_of_these_is_calibrated_on_held_out_photos_and_catches_unseen_categories(trained, tuxpaint_dir):
    options, summary = trained
    measured = summary.none_of_these
    # The targets: ≤ 5 % of known test photos called none of these, ≥ 80 % of unseen ones, AUROC ≥ 0.90.
    assert measured["calibrated"] and measured["calibration_photos"] == summary.split["validation"]
    assert measured["test_rejected"] <= 0.05 and measured["other_photos"] == 185, measured
    assert measured["other_rejected"] >= 0.80 and measured["auroc"] >= 0.90, measured
    assert "None of these: calibrated on" in retrain.format_summary(summary)
    metrics = json.loads((options.output_dir / "report" / "metrics.json").read_text())
    assert metrics["none_of_these"] == measured

    # Stored in the checkpoint (the graph's last output column, conf's none_of_these) and served as it was measured:
    # the served model's verdicts are the report's, known photos mostly kept and unseen ones mostly caught.
    conf = json.loads((options.output_dir / "conf.json").read_text())["http_server"]["tensorflow"]
    assert conf["none_of_these"] == 0.5 and conf["output_tensor"] == "final_result_and_none_of_these"
    model = classifier.load(options.output_dir / "conf.json")
    unseen = sorted((tuxpaint_dir / "other").rglob("*.png"))
    answers = model.execute_with_verdicts(unseen, 32)
    caught = sum(answer["none_of_these"] for answer in answers)
    assert abs(caught - measured["other_rejected"] * len(unseen)) <= 2, (caught, measured)
    known = model.execute_with_verdicts(sorted((tuxpaint_dir / "classes" / "mammals").glob("*.png")), 32)
    assert sum(answer["none_of_these"] for answer in known) <= 0.05 * len(known)
    assert all(answer["labels"][0][0] in TUXPAINT_CLASSES for answer in answers)
    # execute() keeps UAI's format: the top-k pairs alone, the probabilities of the four classes.
    pairs = model.execute(unseen[:3], 3)
    assert all(len(result) == 4 and {label for label, _ in result} == set(TUXPAINT_CLASSES) for result in pairs)
    assert all(abs(sum(p for _, p in result) - 1) < 1e-4 for result in pairs)


def test_the_verdict_is_given_where_asked_and_the_default_answer_is_unchanged(trained, tuxpaint_dir, capsys):
    options, _ = trained
    vehicle = sorted((tuxpaint_dir / "other" / "vehicles").rglob("*.png"))[0]
    # A mammal stamp of the test split (so unseen by training): the classes are stamps, and a photo of a real cat,
    # chelsea.png, is none of them to this model (its distance is past the threshold).
    mammal = next(path for path in sorted((tuxpaint_dir / "classes" / "mammals").rglob("*.png"))
                  if retrain.split_of(path.name, 10, 10) == "testing")
    assert classifier.__main__.main(["--conf", str(options.output_dir / "conf.json"), "--json", str(vehicle),
                                     str(mammal)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[str(vehicle)]["none_of_these"] is True and printed[str(mammal)] == {
        "labels": printed[str(mammal)]["labels"], "none_of_these": False}

    served = InProcessServer("--conf", str(options.output_dir / "conf.json"))
    try:
        for photo in (vehicle, mammal):
            default = requests.post(f"{served.url}/service", data=photo.read_bytes(), timeout=60)
            asked = requests.post(f"{served.url}/service?none_of_these=true", data=photo.read_bytes(), timeout=60)
            assert default.status_code == asked.status_code == 200
            # The default answer, byte for byte, is the asked one's labels as the service always wrote them.
            assert default.content == JSONResponse(asked.json()["labels"]).body
            assert asked.json()["none_of_these"] is (photo == vehicle)
        files = [("file", ("a.png", vehicle.read_bytes())), ("file", ("b.png", mammal.read_bytes()))]
        both = requests.post(f"{served.url}/service?none_of_these=1", files=files, timeout=60).json()
        assert [answer["none_of_these"] for answer in both] == [True, False]
        wrong = requests.post(f"{served.url}/service?none_of_these=maybe", data=vehicle.read_bytes(), timeout=60)
        assert wrong.status_code == 400 and "none_of_these must be true or false" in wrong.json()["error"]
        assert Client(served.url, verbose=False).predict(handle_file(str(vehicle)), api_name="/classify")[
            "label"] in TUXPAINT_CLASSES  # the page's API keeps its shape; the page shows the verdict
    finally:
        served.stop()


def test_a_model_without_the_calibration_says_so_when_asked(server):
    refused = requests.post(f"{server.url}/service?none_of_these=true", data=(PHOTOS / "cat.jpeg").read_bytes(),
                            timeout=60)
    assert refused.status_code == 400 and "no 'none of these' verdict" in refused.json()["error"]


# Small data sets made here.
def noisy(colour: tuple[int, int, int], seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_dataset(folder: Path, classes: dict[str, tuple[int, int, int]], count: int = 12) -> Path:
    for name, colour in classes.items():
        (folder / name).mkdir(parents=True)
        for i in range(count):
            noisy(colour, hash((name, i)) % 2**32).save(folder / name / f"{name}_{i}.png")
    return folder


def tiny_base(folder: Path) -> Path:
    """A base model of a few hundred bytes for the tests of retraining's own logic (the cache, the split, bad
    files, interruptions), where EfficientNet's features would add seconds a run and test nothing more: the tests'
    colour model (bench/null_model.py), its colour logits as the features retraining asks a base for (logits, not
    probabilities: these keep int8's top-1 on every check photo). The real base is retrained on real photos above
    and by the Train tab."""
    write_colour_graph(folder, output_name=FEATURE_TENSOR, probabilities=False)
    return folder


def small_options(tmp_path: Path, image_dir: Path, **kwargs) -> retrain.Options:
    kwargs.setdefault("how_many_training_steps", 200)
    kwargs.setdefault("int8", False)  # the int8 twin has its own test, below
    kwargs.setdefault("base_model_dir", tiny_base(tmp_path / "base"))
    return retrain.Options(image_dir=image_dir, output_dir=tmp_path / "out", bottleneck_dir=tmp_path / "cache",
                           **kwargs)


def test_bad_files_are_skipped_or_ignored(tmp_path, capsys):
    data = make_dataset(tmp_path / "photos", {"Red Apples": (220, 30, 30), "blue_sky!": (30, 30, 220)})
    (data / "Red Apples" / "broken.jpg").write_bytes(encode(noisy((200, 0, 0), 1), "JPEG")[:300])
    (data / "Red Apples" / "notes.txt").write_text("not an image, not a photo suffix: ignored")
    (data / "blue_sky!" / "fake.png").write_text("a text file named .png")
    summary = retrain.retrain(small_options(tmp_path, data))
    # retrain.py's order (sorted folder names, so "R" before "b") and label normalisation
    assert summary.classes == {"red apples": 12, "blue sky ": 12} and list(summary.classes)[0] == "red apples"
    assert sorted(Path(s["file"]).name for s in summary.skipped) == ["broken.jpg", "fake.png"]
    assert "warning: skipping" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "out" / "report" / "metrics.json").read_text())
    assert len(metrics["skipped"]) == 2


def test_a_class_too_small_is_an_error_naming_it(tmp_path):
    data = make_dataset(tmp_path / "photos", {"big": (200, 0, 0), "small": (0, 0, 200)})
    for extra in list((data / "small").iterdir())[4:]:
        extra.unlink()
    with pytest.raises(retrain.RetrainError, match=r"class 'small' has 4 images; at least 10 are needed"):
        retrain.retrain(small_options(tmp_path, data))
    assert not (tmp_path / "out").exists()


def test_fewer_than_two_classes_is_an_error(tmp_path):
    data = make_dataset(tmp_path / "photos", {"only": (200, 0, 0)})
    (data / "empty").mkdir()
    with pytest.raises(retrain.RetrainError, match="has 1 class folder.*at least 2"):
        retrain.retrain(small_options(tmp_path, data))


def test_changed_file_is_recomputed_and_split_is_stable(tmp_path):
    data = make_dataset(tmp_path / "photos", {"red": (200, 0, 0), "blue": (0, 0, 200)})
    first = retrain.retrain(small_options(tmp_path, data))
    noisy((0, 0, 255), 99).save(data / "blue" / "blue_0.png")
    second = retrain.retrain(small_options(tmp_path, data))
    assert (second.bottlenecks_computed, second.bottlenecks_cached) == (1, 23)
    assert first.bottlenecks_computed == 24
    names = [f"photo_{i}.jpg" for i in range(200)]
    assert [retrain.split_of(n, 10, 10) for n in names] == [retrain.split_of(n, 10, 10) for n in names]
    assert retrain.split_of("cat_nohash_1.jpg", 10, 10) == retrain.split_of("cat_nohash_2.jpg", 10, 10)


def test_distortions_add_cached_copies(tmp_path):
    data = make_dataset(tmp_path / "photos", {"red": (200, 0, 0), "blue": (0, 0, 200)})
    options = small_options(tmp_path, data, flip_left_right=True, random_crop=10, random_brightness=10,
                            distorted_copies=2)
    summary = retrain.retrain(options)
    assert summary.bottlenecks_computed == 24 + 2 * summary.split["training"]
    assert retrain.retrain(options).bottlenecks_computed == 0


def test_interrupted_run_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "photos", {"red": (200, 0, 0), "blue": (0, 0, 200)})
    retrain.retrain(small_options(tmp_path, data))
    before = (tmp_path / "out" / "frozen_inference_graph.pb").read_bytes()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(retrain.checkpoint, "write_report", interrupt)  # as the checkpoint writer finds it
    with pytest.raises(KeyboardInterrupt):
        retrain.retrain(small_options(tmp_path, data, how_many_training_steps=7))
    assert (tmp_path / "out" / "frozen_inference_graph.pb").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "cache", "out", "photos"]  # no half-written folder


def test_the_int8_twin_is_written_into_the_engines_cache_and_served_by_precision_int8(tmp_path):
    data = make_dataset(tmp_path / "photos", {"red": (200, 0, 0), "blue": (0, 0, 200)})
    # Trained until its answers are far from a tie, so that int8 keeps the top-1 of nearly every check photo.
    summary = retrain.retrain(small_options(tmp_path, data, int8=True, none_of_these=False, learning_rate=1.0,
                                            how_many_training_steps=1000))
    assert summary.int8.startswith("written (") and " int8" in summary.int8, summary.int8
    assert summary.int8_test_accuracy == 1.0
    conf = json.loads((tmp_path / "out" / "conf.json").read_text())
    conf["http_server"]["tensorflow"].update(model_dir=str(tmp_path / "out"), precision="int8")
    (tmp_path / "int8.json").write_text(json.dumps(conf))
    served = classifier.load(tmp_path / "int8.json")  # from the cache the run wrote, as the Train tab's box serves it
    assert "int8" in served.runtime.engine and served.execute([encode(noisy((0, 0, 210), 7))], 1)[0][0][0] == "blue"
    # With the "none of these" score, int8 is not made, and the summary says why.
    again = retrain.retrain(small_options(tmp_path / "open", data, int8=True))
    assert again.int8.startswith("not made: int8 loses the \"none of these\" score"), again.int8


def test_command_line(tmp_path):
    data = make_dataset(tmp_path / "photos", {"red": (200, 0, 0), "blue": (0, 0, 200)})
    run = subprocess.run([sys.executable, "-m", "classifier.retrain", "--image_dir", str(data), "--output_dir",
                          str(tmp_path / "model"), "--bottleneck_dir", str(tmp_path / "cache"), "--epochs", "5",
                          "--no_int8", "--base_model_dir", str(tiny_base(tmp_path / "base"))],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "Trained on 24 photos in 2 classes (blue 12, red 12)" in run.stdout
    assert "Test accuracy:" in run.stdout and "Serve it: python app.py --conf" in run.stdout
    assert "int8 model: " not in run.stdout  # --no_int8
    run = subprocess.run([sys.executable, "-m", "classifier.retrain", "--image_dir", str(tmp_path / "nope"),
                          "--output_dir", str(tmp_path / "x")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 2 and "error: --image_dir" in run.stderr and "Traceback" not in run.stderr


def test_a_run_killed_between_its_two_renames_is_put_back_by_the_next(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "photos", {"red": (200, 0, 0), "blue": (0, 0, 200)})
    retrain.retrain(small_options(tmp_path, data))
    before = (tmp_path / "out" / "frozen_inference_graph.pb").read_bytes()
    (tmp_path / "out").rename(tmp_path / ".out.previous")  # as a kill after the first rename leaves it

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(retrain.checkpoint, "write_report", interrupt)
    with pytest.raises(KeyboardInterrupt):
        retrain.retrain(small_options(tmp_path, data, how_many_training_steps=7))
    assert (tmp_path / "out" / "frozen_inference_graph.pb").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "cache", "out", "photos"]


def names_in(split: str, count: int, prefix: str) -> list[str]:
    """`count` file names that retrain's hash split puts in `split` (10 % validation, 10 % testing)."""
    names, number = [], 0
    while len(names) < count:
        name = f"{prefix}{number}.png"
        if split_of(name, 10, 10) == split:
            names.append(name)
        number += 1
    return names


def test_a_split_left_empty_is_refused_with_the_number_needed(tmp_path):
    photo = encode(solid("red", (16, 16)))
    for label in ("red", "blue"):
        (tmp_path / label).mkdir()
        # 12 per class passes the class-size check (10), yet the hash split gives testing nothing at all.
        for name in names_in("training", 11, label) + names_in("validation", 1, label):
            (tmp_path / label / name).write_bytes(photo)
    with pytest.raises(retrain.RetrainError, match=r"left no testing photos for 10% testing; add photos: about \d+ per class"):
        retrain.retrain(retrain.Options(image_dir=tmp_path, output_dir=tmp_path / "out", how_many_training_steps=10))
    assert not (tmp_path / "out").exists()
