"""The page's files: its events take only files uploaded to it and give back only its own, flagging is bounded,
and no answer, metric or document shows a server path."""
from __future__ import annotations

import io
import itertools
import json
import os
import re
import threading
import uuid
import zipfile
from pathlib import Path

import gradio as gr
import httpx
import pytest

from classifier.serving.ui.file_gate import answer_paths, payload_paths
from conftest import AUTH, CAT_LABELS, GRADIO_CACHE, PHOTOS, ROOT, encode, solid
from test_security import Attacker, copies_of, server_file

def meta_less(path: Path | str) -> dict:
    """A file payload without Gradio's "meta" marker: Gradio then skips its own upload check."""
    return {"path": str(path), "orig_name": "photo.png"}


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("server-files") / "secret.txt"
    path.write_text(f"TOP-SECRET-{uuid.uuid4().hex}\n")
    return path


def event_within(attacker: Attacker, fn_index: int, data: list, seconds: float = 30) -> tuple[bool, str]:
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(answer=attacker.event(fn_index, data)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"event {fn_index} did not answer within {seconds} s"
    return outcome["answer"]


@pytest.mark.parametrize("auth", [None, AUTH], ids=["open", "auth"])
def test_flag_copies_no_server_file_and_reads_no_device(guarded, secret, auth):
    running, folder = guarded(auth)
    attacker = Attacker(running.url, auth)
    flag = attacker.fn_index("Flag")
    for path in (secret, "/etc/passwd", "/dev/zero"):
        flagged, answer = event_within(attacker, flag, [meta_less(path), {"label": "x"}])
        assert not flagged, f"Flag took {path}: {answer}"
        assert "not uploaded" in answer
    assert copies_of(secret, folder) == []
    assert not [p for p in (folder / "flagged").rglob("*") if p.name in ("passwd", "zero")]
    assert httpx.get(f"{running.url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("auth", [None, AUTH], ids=["open", "auth"])
def test_every_event_refuses_a_server_path_without_meta(guarded, secret, auth):
    running, folder = guarded(auth)
    attacker = Attacker(running.url, auth)
    events = [d for d in attacker.config["dependencies"] if d.get("backend_fn") and d["inputs"]]
    assert len(events) >= 5
    for dependency in events:
        for payload in (meta_less(secret), meta_less(PHOTOS / "cat.jpeg")):  # a server photo is no upload either
            success, answer = event_within(attacker, dependency["id"], [payload] * len(dependency["inputs"]))
            assert not success, f"event {dependency.get('api_name')} accepted {payload['path']}: {answer}"
            assert secret.read_text().strip() not in answer and not any(label in answer for label in CAT_LABELS)
    assert copies_of(secret, folder) == []


def upload(attacker: Attacker, name: str, data: bytes) -> str:
    answer = attacker.http.post(f"{attacker.url}/gradio_api/upload", files={"files": (name, data)})
    assert answer.status_code == 200, answer.text
    return answer.json()[0]


def test_flag_takes_each_uploaded_photo_once_and_stops_at_its_budget(guarded):
    running, folder = guarded(AUTH)
    attacker = Attacker(running.url, AUTH)
    flag = attacker.fn_index("Flag")
    not_a_photo = upload(attacker, "data.bin", os.urandom(200_000))
    flagged, answer = attacker.event(flag, [server_file(not_a_photo), {"label": "x"}])
    assert not flagged and "only photos can be flagged" in answer

    photos = [upload(attacker, f"{colour}.png", encode(solid(colour, (64, 48)))) for colour in ("red", "green", "blue")]
    assert attacker.event(flag, [server_file(photos[0]), {"label": "tabby" * 100}])[0]
    again, answer = attacker.event(flag, [server_file(photos[0]), {"label": "tabby"}])
    assert not again and "flagged already" in answer  # flagging one upload again and again copies it once
    for photo in photos[1:]:
        assert attacker.event(flag, [server_file(photo), {"label": "tabby"}])[0]
    fourth = upload(attacker, "cat.jpeg", (PHOTOS / "cat.jpeg").read_bytes())
    full, answer = attacker.event(flag, [server_file(fourth), {"label": "tabby"}])
    assert not full and "flagging folder is full (3 photos" in answer  # --max-flagged 3
    saved = [p for p in (folder / "flagged").rglob("*") if p.is_file() and p.suffix != ".csv"]
    assert sorted(p.name for p in saved) == ["blue.png", "green.png", "red.png"]
    from classifier.retrain import read_flagged
    assert all(len(label) <= 200 for _, label in read_flagged(folder / "flagged"))

    # The Train tab's list shows them by their place in the flagging folder, never by a server path.
    listed, listing = attacker.event(attacker.fn_index("flagged"), [])
    rows = json.loads(listing)["output"]["data"][0]["data"]
    assert listed and len(rows) == 3 and not any(str(folder) in row[0] or row[0].startswith("/") for row in rows)


def test_train_errors_show_no_server_path(guarded):
    running, folder = guarded(None)
    attacker = Attacker(running.url)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("only-one-class/a.png", encode(solid("red")))
    zipped = upload(attacker, "photos.zip", buffer.getvalue())
    table = {"headers": ["photo", "model said", "label"], "data": [["", "", ""]]}
    trained, answer = attacker.event(attacker.fn_index("train"), [server_file(zipped), table, 100, False, True, None])
    assert not trained and "class folder" in answer
    assert str(folder) not in answer and "/tmp" not in answer and "the uploaded photos" in answer

    # A label too long for a folder name is refused in words, not with the OS's error and our path.
    red = upload(attacker, "red.png", encode(solid("red", (40, 30))))
    assert attacker.event(attacker.fn_index("Flag"), [server_file(red), {"label": "tabby"}])[0]
    listed, listing = attacker.event(attacker.fn_index("flagged"), [])
    rows = json.loads(listing)["output"]["data"][0]["data"]
    table["data"] = [[rows[0][0], "tabby", "x" * 300]]
    trained, answer = attacker.event(attacker.fn_index("train"), [None, table, 100, False, True, None])
    assert not trained and "at most 200 bytes" in answer and "Errno" not in answer and str(folder) not in answer


def test_metrics_and_api_docs_show_no_server_path_and_docs_need_the_login(guarded):
    running, _ = guarded(AUTH)
    metrics = httpx.get(f"{running.url}/metrics", timeout=10)
    # The model's folder by its name alone (which one is test_metrics' to check: in this process, the registry is
    # shared by every server the tests built, and names the last model loaded).
    folders = re.findall(r'classifier_model_info\{[^}]*model_dir="([^"]*)"', metrics.text)
    assert metrics.status_code == 200 and folders and all("/" not in folder for folder in folders), folders
    assert str(Path(__file__).resolve().parent.parent) not in metrics.text
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(f"{running.url}{path}", timeout=10).status_code == 401, path
        assert httpx.get(f"{running.url}{path}", auth=AUTH, timeout=10).status_code == 200, path
    assert httpx.get(f"{running.url}/gradio_api/openapi.json", timeout=10).status_code == 401  # Gradio's: its login


def file_shapes(path: Path | str) -> list:
    """A path as every value shape an event may take: a file, a list of files, a gallery, with and without meta."""
    bare, marked = meta_less(path), {**meta_less(path), "meta": {"_type": "gradio.FileData"}}
    return [bare, [marked], [{"image": bare, "caption": "x"}]]


# Item 1: the Batch tab's re-sort (private, callable by fn_index) handed a client's gallery back; Gradio then
# copied any file under the working folder or /tmp into its cache and served it. Every event, every shape.
@pytest.mark.parametrize("auth", [None, AUTH], ids=["open", "auth"])
def test_no_event_takes_or_gives_back_a_server_file_in_any_shape(guarded, secret, auth):
    running, folder = guarded(auth)
    attacker = Attacker(running.url, auth)
    events = [d for d in attacker.config["dependencies"] if d.get("backend_fn") and d["inputs"]]
    resort = [d for d in events if d.get("api_name") is None or d.get("api_visibility") == "private"]
    assert resort, "the private events (the Batch tab's re-sort) are callable by fn_index and must be tried"
    kinds = {component["id"]: component["type"] for component in attacker.config["components"]}
    for dependency in events:
        # A gr.State input holds the server's value whatever the client sends (a streaming event given no frame
        # waits for one): each other input in turn gets the file.
        places = [place for place, block in enumerate(dependency["inputs"]) if kinds[block] != "state"]
        for target in (secret, ROOT / "conf.json"):
            for place, shape in itertools.product(places, file_shapes(target)):
                data = [None] * len(dependency["inputs"])
                data[place] = shape  # one input at a time: another input's bad value would end the event early
                ok, answer = event_within(attacker, dependency["id"], data)
                assert target.read_text()[:40] not in answer
                assert str(target.parent) not in answer and str(ROOT) not in answer  # item 11: no server folder
                if ok:  # an event may ignore the value (gr.State inputs hold the server's own), never return it
                    assert str(target) not in answer and target.name not in answer, (dependency, shape, answer)
    assert copies_of(secret, folder) == []
    assert not [p for p in GRADIO_CACHE.rglob("conf.json")]
    for target in (secret, ROOT / "conf.json", ROOT / "app.py"):
        got = attacker.http.get(f"{running.url}/gradio_api/file={target}")
        assert got.status_code in (403, 404) and target.read_text()[:40] not in got.text


def test_the_gate_finds_every_file_a_value_names():
    """In-process: the shapes the gate reads (no server)."""
    assert sorted(payload_paths([{"image": {"path": "/a"}, "caption": "/not-a-path"}, {"path": "/b"}])) == ["/a", "/b"]
    assert list(payload_paths({"label": "x", "confidences": []})) == []
    gallery = gr.Gallery(render=False)
    assert list(answer_paths(gallery, [("/a.jpg", "caption /c"), "/b.jpg"])) == ["/a.jpg", "/b.jpg"]
    assert list(answer_paths(gr.DownloadButton(render=False), gr.DownloadButton(value="/m.zip", render=False))) \
        == ["/m.zip"]
    assert list(answer_paths(gr.File(render=False), gr.update(value=["/x", {"path": "/y"}]))) == ["/x", "/y"]


def test_monitoring_is_off(guarded):
    running, _ = guarded(None)
    assert httpx.get(f"{running.url}/monitoring/summary", timeout=10).status_code in (401, 403, 404)
    assert httpx.get(f"{running.url}/gradio_api/monitoring/summary", timeout=10).status_code in (401, 403, 404)
