"""Nothing grows without bound: uploads leave the disk, slow connections are closed, kills lose nothing."""
from __future__ import annotations

import io
import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bench.soak import distinct_photos  # one way to make photos no visitor sent before
from conftest import CAT_LABELS, PHOTOS, Server, write_colour_graph, write_conf
from test_app import curl
from test_operations import wait_for
from test_security import Attacker, server_file
from in_process import InProcessServer


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


RETENTION_S = 6  # short, yet longer than a busy 2-core machine stalls between an upload and its event


@pytest.fixture(scope="module")
def retaining(tmp_path_factory):
    folder = tmp_path_factory.mktemp("retention")
    running = Server("--upload-retention", str(RETENTION_S), "--flagging-dir", str(folder / "flagged"),
                     env={"GRADIO_TEMP_DIR": str(folder / "gradio")})
    yield running, folder
    running.stop()


def test_uploaded_photos_leave_the_disk_within_the_retention_but_flagged_ones_stay(retaining, tmp_path):
    from gradio_client import Client, handle_file

    running, folder = retaining
    photos = distinct_photos(tmp_path, 12)
    client = Client(running.url + "/", verbose=False)
    # The first event after start-up is the slowest; were it slower than the retention, the sweep could delete its
    # upload before it is read (as it would for any user who sets a retention shorter than the queue's wait).
    client.predict(handle_file(str(PHOTOS / "cat.jpeg")), api_name="/classify")
    for photo in photos:
        assert client.predict(handle_file(str(photo)), api_name="/classify")["label"] in CAT_LABELS
    cache = folder / "gradio"
    uploaded = [p for p in files_in(cache) if p.name.startswith("visitor_")]
    assert len(uploaded) >= len(photos)  # they were on disk…

    # One photo is flagged, as the page does it: upload, then the Flag event with the uploaded file.
    attacker = Attacker(running.url)
    [path] = attacker.http.post(f"{running.url}/gradio_api/upload",
                                files={"files": ("flag_me.jpg", (PHOTOS / "cat.jpeg").read_bytes())}).json()
    flagged, answer = attacker.event(attacker.fn_index("Flag"), [server_file(path), {"label": "tabby"}])
    assert flagged, answer

    # …and are gone within the retention + the sweep's interval (min(60, retention) s), with margin.
    gone = wait_for(lambda: not [p for p in files_in(cache) if p.name.startswith(("visitor_", "flag_me"))],
                    2 * RETENTION_S + 20)
    assert gone
    assert [p.name for p in files_in(folder / "flagged") if p.suffix == ".jpg"] == ["flag_me.jpg"]
    # The examples, which Gradio keeps in its cache on purpose, still load.
    example = client.predict(handle_file(str(PHOTOS / "cat.jpeg")), api_name="/classify")
    assert example["label"] in CAT_LABELS


def test_the_train_tabs_zip_is_deleted_when_training_ends(retaining, tmp_path):
    from gradio_client import Client, handle_file

    running, folder = retaining
    archive = tmp_path / "photos.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: training fails at once, after the upload
    client = Client(running.url + "/", verbose=False)
    with pytest.raises(Exception):
        client.predict(handle_file(str(archive)), {"headers": ["photo", "model said", "label"], "data": []}, 100,
                       api_name="/train")
    assert not [p for p in files_in(folder / "gradio") if p.suffix == ".zip"]


# Slow and idle connections.
@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    running = Server("--read-timeout", "2", "--max-connections", "400", "--no-train")
    yield running
    running.stop()


def half_requests(url: str, count: int, first_line_only: bool = False) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"POST /service HTTP/1.1\r\n" if first_line_only else
                     b"POST /service HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nonly part of the body")
        sockets.append(sock)
    return sockets


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        data = sock.recv(4096)
        while data and b"408" in data.split(b"\r\n", 1)[0] and (more := sock.recv(4096)):
            data = more
        return data == b"" or b" 408 " in data.split(b"\r\n", 1)[0]
    except (ConnectionResetError, socket.timeout):
        return False


def test_half_sent_requests_are_closed_after_the_read_timeout_while_real_ones_are_answered(strict):
    headers_only = half_requests(strict.url, 250, first_line_only=True)
    body_stalled = half_requests(strict.url, 50)
    started = time.monotonic()
    status, result, _ = curl("-T", str(PHOTOS / "cat.jpeg"), f"{strict.url}/service")
    assert status == 200 and result[0][0] in CAT_LABELS
    assert all(closed_by_server(sock) for sock in headers_only + body_stalled)
    assert time.monotonic() - started < 15  # 2 s deadlines, not the uvicorn default of never
    for sock in headers_only + body_stalled:
        sock.close()
    assert curl("-T", str(PHOTOS / "cat.jpeg"), f"{strict.url}/service")[0] == 200


def test_past_the_connection_cap_requests_are_refused_at_once(strict):
    idle = [socket.create_connection(("127.0.0.1", int(strict.url.rsplit(":", 1)[1]))) for _ in range(400)]
    try:
        started = time.monotonic()
        assert httpx.get(f"{strict.url}/healthz", timeout=10).status_code == 503
        assert time.monotonic() - started < 2
    finally:
        for sock in idle:
            sock.close()
    assert wait_for(lambda: httpx.get(f"{strict.url}/healthz", timeout=10).status_code == 200, 10)


# Faults during writes: a real SIGKILL, then a clean start.
def kill(running: Server) -> None:
    running.process.send_signal(signal.SIGKILL)
    running.process.wait(30)


def test_a_kill_while_flagging_leaves_complete_entries_and_a_clean_start(tmp_path):
    flagged_dir = tmp_path / "flagged"
    running = Server("--flagging-dir", str(flagged_dir), env={"GRADIO_TEMP_DIR": str(tmp_path / "gradio")})
    attacker = Attacker(running.url)
    flag = attacker.fn_index("Flag")
    photos = [photo.read_bytes() for photo in distinct_photos(tmp_path, 6)]  # each photo is flagged once only
    done = 0
    try:
        deadline = time.monotonic() + 60
        while done < 5 and time.monotonic() < deadline:
            [path] = attacker.http.post(f"{running.url}/gradio_api/upload",
                                        files={"files": (f"p{done}.jpg", photos[done])}).json()
            done += attacker.event(flag, [server_file(path), {"label": "tabby"}])[0]
        # The next flag's event is sent and the server killed while it is being written.
        [path] = attacker.http.post(f"{running.url}/gradio_api/upload",
                                    files={"files": ("last.jpg", photos[5])}).json()
        attacker.http.post(f"{running.url}/gradio_api/queue/join",
                           json={"data": [server_file(path), {"label": "tabby"}], "fn_index": flag,
                                 "session_hash": "killed"})
    finally:
        kill(running)
    restarted = InProcessServer("--flagging-dir", str(flagged_dir))  # a fresh start from what the kill left
    try:
        from classifier.retrain import read_flagged

        rows = read_flagged(flagged_dir)
        assert len(rows) >= done and all(photo.is_file() and label for photo, label in rows)
        listed = Attacker(restarted.url).event(Attacker(restarted.url).fn_index("flagged"), [])
        # Listed by their place in the flagging folder (the page shows no server path).
        assert listed[0] and all(photo.resolve().relative_to(flagged_dir.resolve()).as_posix() in listed[1]
                                 for photo, _ in rows)
    finally:
        restarted.stop()


def test_a_kill_while_reloading_keeps_the_versions_and_starts_on_the_newest(tmp_path):
    for version in (1, 2):
        write_colour_graph(tmp_path / "models" / str(version))
    (tmp_path / "models" / "2" / "label_map.txt").write_text("blue\ngreen\nred\n")
    conf = write_conf(tmp_path, model_dir="models")
    running = Server("--conf", str(conf), "--no-train", "--open-admin")
    write_colour_graph(tmp_path / "models" / "3")
    try:
        with httpx.Client() as http:  # a reload in flight, then the kill
            try:
                http.post(f"{running.url}/admin/reload", timeout=0.05)
            except httpx.TimeoutException:
                pass
    finally:
        kill(running)
    restarted = InProcessServer("--conf", str(conf), "--no-train")  # a fresh start from what the kill left
    try:
        red = io.BytesIO()
        Image.new("RGB", (8, 8), (230, 20, 20)).save(red, "PNG")
        answer = httpx.put(f"{restarted.url}/service", content=red.getvalue(), timeout=30).json()
        assert answer[0][0] == "red"  # version 3 (labels in order), complete and served
        assert restarted.model.version == 3
    finally:
        restarted.stop()


def test_a_kill_while_training_keeps_the_previous_model_and_leaves_no_half_checkpoint(tmp_path):
    import subprocess
    import sys

    from classifier import retrain
    from conftest import ROOT
    from test_retrain import make_dataset, tiny_base

    data = make_dataset(tmp_path / "photos", {"red": (200, 0, 0), "blue": (0, 0, 200)})
    base = tiny_base(tmp_path / "base")  # the kill's subject is the checkpoint, not the features
    command = [sys.executable, "-m", "classifier.retrain", "--image_dir", str(data), "--output_dir",
               str(tmp_path / "model"), "--bottleneck_dir", str(tmp_path / "cache"), "--no_int8",  # not its subject
               "--base_model_dir", str(base)]
    # The model it must keep: trained here, in this process (a second TensorFlow start would cost ~8 s).
    retrain.retrain(retrain.Options(image_dir=data, output_dir=tmp_path / "model", bottleneck_dir=tmp_path / "cache",
                                    how_many_training_steps=50, int8=False, base_model_dir=base))
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir() if p.is_file()}

    second = subprocess.Popen(command + ["--how_many_training_steps", "200000"], cwd=ROOT,
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    seen = b""
    while b"Training" not in seen:  # tqdm's bar: the new layer is being trained
        chunk = second.stderr.read1(4096)
        assert chunk, "retrain ended before it trained"
        seen += chunk
    second.send_signal(signal.SIGKILL)
    second.wait(30)
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "cache", "model", "photos"]  # no staging folder left

    # A fresh start from what the kill left.
    restarted = InProcessServer("--conf", str(tmp_path / "model" / "conf.json"), "--no-train")
    try:
        red = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 0, 0)).save(red, "PNG")
        answer = httpx.put(f"{restarted.url}/service", content=red.getvalue(), timeout=30).json()
        assert answer[0][0] == "red"
    finally:
        restarted.stop()
    assert json.loads((tmp_path / "model" / "conf.json").read_text())["http_server"]["tensorflow"]["model_dir"] == "."
