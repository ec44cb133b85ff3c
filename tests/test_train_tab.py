"""The Train tab, driven through Gradio's API: upload a zip, train, serve the new model beside the others by name,
saved into the model repository, without a restart; replacing one of that name only when asked."""
from __future__ import annotations

import zipfile

import pytest

from bench.server import conf_variant
from conftest import encode, solid
from test_app import curl
from test_retrain import noisy
from in_process import InProcessServer


NO_FLAGGED = {"headers": ["photo", "model said", "label"], "data": []}


@pytest.fixture(scope="module")
def flagged_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("flagged")


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    (folder / "imagenet").mkdir()  # the default model, on LiteRT: its engine choice by timing is not this file's
    conf_variant(folder / "imagenet", tensorflow={"runtime": "litert"})
    return folder


@pytest.fixture(scope="module")
def training_server(tmp_path_factory, flagged_dir, repository):
    trained = tmp_path_factory.mktemp("trained")
    running = InProcessServer("--model-repository", str(repository), "--train-dir", str(trained),
                              "--flagging-dir", str(flagged_dir), "--open-admin")  # Serve this model, without --auth
    yield running
    running.stop()


def make_zip(path, classes: dict[str, tuple[int, int, int]], count: int = 12):
    with zipfile.ZipFile(path, "w") as archive:
        for name, colour in classes.items():
            for i in range(count):
                archive.writestr(f"my photos/{name}/{i}.png", encode(noisy(colour, hash((name, i)) % 2**32)))
        archive.writestr("my photos/readme.txt", "ignored")
    return path


def test_upload_train_and_serve_beside_the_others_without_restart(training_server, repository, tmp_path):
    from gradio_client import Client, handle_file

    red = tmp_path / "red.png"
    solid("red").save(red)
    before = curl("-T", str(red), f"{training_server.url}/service")[1]
    assert before[0][0] not in ("reddish", "bluish")  # an ImageNet label

    client = Client(training_server.url, verbose=False)
    archive = make_zip(tmp_path / "photos.zip", {"Reddish": (210, 40, 40), "bluish": (40, 40, 210)})
    report, matrix, curve = client.predict(handle_file(str(archive)), NO_FLAGGED, 300, api_name="/train")
    assert "Trained on 24 photos in 2 classes (reddish 12, bluish 12)" in report and "Test accuracy" in report
    assert "int8 model" not in report  # the box is off by default: the page serves the fp32 model
    assert "None of these: calibrated on" in report  # that box is on by default
    assert matrix and curve
    with pytest.raises(Exception, match="'my model' cannot name a model"):
        client.predict("my model", False, api_name="/serve_trained")
    served, picker = client.predict("colours", False, api_name="/serve_trained")
    assert "Now serving **frozen graph · 2 labels · 224×224 input [0, 1] · " in served
    assert "as **colours** (the model repository, as `colours`)" in served and picker["value"] == "colours"
    assert (repository / "colours" / "conf.json").is_file()  # saved into the repository: a restart serves it too
    assert not list(repository.glob(".*"))  # nothing half-copied left beside it

    status, after, _ = curl("-T", str(red), f"{training_server.url}/service/colours")
    assert status == 200 and after[0][0] == "reddish" and len(after) == 2
    assert curl("-T", str(red), f"{training_server.url}/service")[1] == before  # the default model is unchanged
    label = client.predict(handle_file(str(red)), "colours", api_name="/classify")
    assert label["label"] == "reddish"
    # Why, for the retrained model too: a red square on the left of a blue photo, explained as "reddish".
    half = solid("blue", (224, 224))
    half.paste(solid("red", (112, 224)), (0, 0))
    half.save(tmp_path / "half.png")
    status, why, _ = curl("--data-binary", f"@{tmp_path / 'half.png'}",
                          f"{training_server.url}/explain/colours?label=reddish")
    assert status == 200 and why["label"] == "reddish"
    grid = [[max(cell, 0) for cell in row] for row in why["grid"]]
    half = len(grid[0]) // 2
    assert sum(sum(row[:half]) for row in grid) > sum(sum(row[half:]) for row in grid)


def write_flagged(folder, classes: dict[str, tuple[int, int, int]], count: int = 12) -> None:
    """Flagged photos as the page's Flag button writes them (Gradio's CSVLogger format, seen in
    test_browser.py): dataset1.csv with the saved photo's path and the Label value as JSON."""
    import csv
    import json

    with open(folder / "dataset1.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["Photo", "Top labels", "timestamp"])
        for name, colour in classes.items():
            for i in range(count):
                photo = folder / "Photo" / f"{name}{i}" / "photo.png"
                photo.parent.mkdir(parents=True)
                photo.write_bytes(encode(noisy(colour, hash((name, i)) % 2**32)))
                writer.writerow([str(photo), json.dumps({"label": "tabby", "confidences": []}), "2026-11-24"])


def test_label_flagged_photos_and_train_on_them(training_server, flagged_dir, tmp_path):
    from gradio_client import Client

    client = Client(training_server.url, verbose=False)
    write_flagged(flagged_dir, {"greenish": (40, 210, 40), "purplish": (160, 40, 200)})
    table = client.predict(api_name="/flagged")
    assert len(table["data"]) == 24 and all(row[1] == "tabby" for row in table["data"])  # what the model said
    for row in table["data"]:
        row[2] = "greenish" if "greenish" in row[0] else "purplish"  # the user types the right label
    table["data"][0][2] = ""  # and leaves one out
    # Both boxes ticked: int8 cannot keep "none of these", and the report says so (the int8 twin itself, written
    # and served, is test_retrain.py's; quantizing EfficientNet here would add ~20 s and test the same code).
    report, _, _ = client.predict(None, table, 300, True, True, api_name="/train")
    assert "Trained on 23 photos in 2 classes (greenish 11, purplish 12)" in report
    assert 'int8 model: not made: int8 loses the "none of these" score' in report, report
    green = tmp_path / "green.png"
    green.write_bytes(encode(noisy((40, 210, 40), 5)))
    served, _ = client.predict("flagged", False, api_name="/serve_trained")  # a name of this test's own
    assert "as **flagged**" in served
    assert curl("-T", str(green), f"{training_server.url}/service/flagged")[1][0][0] == "greenish"
    with pytest.raises(Exception, match="a model named 'flagged' is served already: tick \"Replace it\""):
        client.predict("flagged", False, api_name="/serve_trained")
    served, _ = client.predict("flagged", True, api_name="/serve_trained")  # asked for: loaded anew, in its place
    assert "as **flagged**" in served
    assert curl("-T", str(green), f"{training_server.url}/service/flagged")[1][0][0] == "greenish"


def test_bad_zip_gets_a_clear_error(training_server, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(training_server.url, verbose=False)
    archive = make_zip(tmp_path / "small.zip", {"one": (200, 0, 0), "two": (0, 0, 200)}, count=3)
    with pytest.raises(Exception, match="has 3 images; at least 10 are needed"):
        client.predict(handle_file(str(archive)), NO_FLAGGED, 100, api_name="/train")
    not_zip = tmp_path / "photos.zip"
    not_zip.write_text("not a zip")
    with pytest.raises(Exception, match="not a readable .zip"):
        client.predict(handle_file(str(not_zip)), NO_FLAGGED, 100, api_name="/train")


@pytest.mark.parametrize("args, why", [(["--no-train"], "--no-train was given"),
                                       (["--share"], "shared without --auth"),
                                       (["--host", "0.0.0.0"], "listens on 0.0.0.0 without --auth"),
                                       (["--host", "0.0.0.0", "--auth", "ann:s3cret"], None),
                                       (["--host", "0.0.0.0", "--train"], None), ([], None)])
def test_training_is_off_when_others_can_reach_it_without_auth_or_turned_off(args, why):
    import app

    off = app.why_training_is_off(app.parse_args(args), ("ann", "s3cret") if "--auth" in args else None)
    assert (why is None and off is None) or why in off


def test_a_server_others_can_reach_says_training_is_off_and_has_no_train_endpoint():
    running = InProcessServer("--host", "0.0.0.0")
    try:
        text = str(curl(f"{running.url}/config")[1])
        assert "Training is turned off" in text and "listens on 0.0.0.0 without --auth" in text
        assert "/train" not in str(curl(f"{running.url}/gradio_api/info")[1]["named_endpoints"])
    finally:
        running.stop()
