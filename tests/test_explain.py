"""Why this label, and many photos at once: the heatmap on photos whose answer is known, /explain over HTTP and
Gradio's API, and the Batch tab's API with its CSV."""
from __future__ import annotations

import base64
import csv
import io
import zipfile

import numpy as np
import pytest
import requests
from PIL import Image

from bench.explain import cases, share_on
from conftest import CAT_LABELS, PHOTOS, encode, solid


def test_the_heat_falls_where_the_label_is(default_model):
    """Cat on one half, coffee on the other: each label's heat is mostly on its own half; swapping the halves
    swaps the answer (so a method that always pointed at one side, or at the centre, fails)."""
    from classifier import explain

    for photo, index, side in cases(default_model):
        explanation = explain.explain(default_model, photo, default_model.labels[index])
        assert explanation.grid.shape == (explain.GRID, explain.GRID)
        assert share_on(explanation.grid, side) >= 0.65, (explanation.label, side)
        other = "right" if side == "left" else "left"
        assert share_on(explanation.grid, other) < 0.35


def test_explain_over_http(server, default_model, photo_bytes):
    from classifier import explain

    cat = photo_bytes["cat.jpeg"]
    top = requests.post(f"{server.url}/service", data=cat, timeout=60).json()[0]
    answer = requests.post(f"{server.url}/explain", data=cat, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["label"] == top[0] and body["probability"] == pytest.approx(top[1], abs=1e-5)
    grid = np.array(body["grid"])
    # The same numbers as the library's explanation: the server's copies went through the batcher, unchanged.
    expected = explain.explain(default_model, cat).grid
    assert grid.shape == (explain.GRID, explain.GRID) and np.allclose(grid, expected, atol=2e-3)
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    photo = Image.open(PHOTOS / "cat.jpeg")
    assert overlay.format == "PNG" and overlay.size == photo.size  # 451×300: under 512 px, not enlarged
    assert overlay.size[0] / overlay.size[1] == pytest.approx(photo.size[0] / photo.size[1], abs=0.01)

    tabby = requests.post(f"{server.url}/explain", params={"label": "tabby"}, data=cat, timeout=60).json()
    assert tabby["label"] == "tabby" and not np.allclose(tabby["grid"], body["grid"])


def test_explain_refuses_as_service_does(server, tmp_path):
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    for params, data, status, words in [({}, b"", 400, "empty"), ({}, b"not a photo", 400, "not a recognised image"),
                                        ({}, svg, 415, "SVG"), ({}, b"\xff" * (20 * 1024 * 1024 + 1), 413, "limit"),
                                        ({"label": "no such label"}, (PHOTOS / "cat.jpeg").read_bytes(), 400,
                                         "no label 'no such label'")]:
        answer = requests.post(f"{server.url}/explain", params=params, data=data, timeout=60)
        assert answer.status_code == status and words in answer.json()["error"], answer.text


def test_explain_and_batch_through_gradio_client(server, tmp_path, photo_bytes):
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False)
    overlay = Image.open(client.predict(handle_file(str(PHOTOS / "cat.jpeg")), "", api_name="/explain"))
    assert overlay.format == "PNG" and overlay.size == Image.open(PHOTOS / "cat.jpeg").size
    rgb = np.asarray(overlay.convert("RGB"), dtype=np.int16)
    original = np.asarray(Image.open(PHOTOS / "cat.jpeg").convert("RGB").resize(overlay.size), dtype=np.int16)
    assert (np.abs(rgb - original).max(axis=2) > 20).mean() > 0.05  # the heat is drawn over part of the photo
    over_http = requests.post(f"{server.url}/explain", data=photo_bytes["cat.jpeg"], timeout=60).json()
    same = Image.open(io.BytesIO(base64.b64decode(over_http["overlay_png"])))
    assert np.abs(np.asarray(same, dtype=np.int16) - rgb).mean() < 1  # the page and HTTP: one explanation

    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("holiday/coffee.jpeg", photo_bytes["coffee.jpeg"])
        z.writestr("holiday/notes.txt", "not a photo, and not listed")
        z.writestr("holiday/broken.jpg", b"not a photo")
    names = ["cat.jpeg", "rocket.jpg", "chelsea.png"]
    gallery, table = client.predict([handle_file(str(PHOTOS / n)) for n in names] + [handle_file(str(archive))],
                                    "least confident first", api_name="/classify_batch")
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [row["file"] for row in rows] == names + ["coffee.jpeg", "broken.jpg"]  # as dropped, one row each
    for row in rows[:4]:  # the same top-k as /service
        body = (PHOTOS / row["file"]).read_bytes()
        service = requests.post(f"{server.url}/service", data=body, timeout=60).json()
        assert [row[f"label_{n + 1}"] for n in range(5)] == [label for label, _ in service]
        assert float(row["probability_1"]) == pytest.approx(service[0][1], abs=1e-5)
    assert "not a recognised image" in rows[4]["error"]
    # The gallery, least confident first and the failed photo last, each captioned with its top label.
    confidences = [float(row["probability_1"]) for row in rows[:4]]
    captions = [item["caption"] for item in gallery]
    assert captions[-1].startswith("broken.jpg:")
    assert [c.split(":")[0] for c in captions[:4]] == [rows[i]["file"] for i in np.argsort(confidences)]


def test_a_batch_is_bounded(server, tmp_path):
    from gradio_client import Client, handle_file

    archive = tmp_path / "too_many.zip"
    with zipfile.ZipFile(archive, "w") as z:
        tiny = encode(solid("red", (8, 8)))
        for number in range(501):
            z.writestr(f"p{number}.png", tiny)
    client = Client(server.url, verbose=False)
    with pytest.raises(Exception, match="More than 500 photos"):
        client.predict([handle_file(str(archive))], "as dropped", api_name="/classify_batch")
    assert requests.post(f"{server.url}/service", data=(PHOTOS / "cat.jpeg").read_bytes(),
                         timeout=60).json()[0][0] in CAT_LABELS  # and the server is fine
