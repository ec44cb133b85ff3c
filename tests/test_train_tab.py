"""The Train tab, driven through Gradio's API: upload a zip, train, serve the new model without a restart."""
from __future__ import annotations

import zipfile

import pytest

from conftest import Server, encode, solid
from test_app import curl
from test_retrain import noisy


@pytest.fixture(scope="module")
def training_server(tmp_path_factory):
    running = Server("--train-dir", str(tmp_path_factory.mktemp("trained")))
    yield running
    running.stop()


def make_zip(path, classes: dict[str, tuple[int, int, int]], count: int = 12):
    with zipfile.ZipFile(path, "w") as archive:
        for name, colour in classes.items():
            for i in range(count):
                archive.writestr(f"my photos/{name}/{i}.png", encode(noisy(colour, hash((name, i)) % 2**32)))
        archive.writestr("my photos/readme.txt", "ignored")
    return path


def test_upload_train_and_serve_without_restart(training_server, tmp_path):
    from gradio_client import Client, handle_file

    red = tmp_path / "red.png"
    solid("red").save(red)
    before = curl("-T", str(red), f"{training_server.url}/service")[1]
    assert before[0][0] not in ("reddish", "bluish")  # an ImageNet label

    client = Client(training_server.url, verbose=False)
    archive = make_zip(tmp_path / "photos.zip", {"Reddish": (210, 40, 40), "bluish": (40, 40, 210)})
    report, matrix, curve = client.predict(handle_file(str(archive)), 300, api_name="/train")
    assert "Trained on 24 photos in 2 classes (reddish 12, bluish 12)" in report and "Test accuracy" in report
    assert matrix and curve
    served = client.predict(api_name="/serve_trained")
    assert "Now serving **frozen graph · 2 labels · 224×224 input · " in served

    status, after, _ = curl("-T", str(red), f"{training_server.url}/service")
    assert status == 200 and after[0][0] == "reddish" and len(after) == 2
    label = client.predict(handle_file(str(red)), api_name="/classify")
    assert label["label"] == "reddish"


def test_bad_zip_gets_a_clear_error(training_server, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(training_server.url, verbose=False)
    archive = make_zip(tmp_path / "small.zip", {"one": (200, 0, 0), "two": (0, 0, 200)}, count=3)
    with pytest.raises(Exception, match="has 3 images; at least 10 are needed"):
        client.predict(handle_file(str(archive)), 100, api_name="/train")
    not_zip = tmp_path / "photos.zip"
    not_zip.write_text("not a zip")
    with pytest.raises(Exception, match="not a readable .zip"):
        client.predict(handle_file(str(not_zip)), 100, api_name="/train")


def test_training_is_off_when_shared_without_auth_or_turned_off():
    for args in (["--no-train"], ["--share"]):
        running = Server(*args)
        try:
            config = curl(f"{running.url}/config")[1]
            text = str(config)
            assert "Training is turned off" in text
            assert ("--no-train was given" if args == ["--no-train"] else "shared without --auth") in text
            assert "/train" not in str(curl(f"{running.url}/gradio_api/info")[1]["named_endpoints"])
        finally:
            running.stop()
