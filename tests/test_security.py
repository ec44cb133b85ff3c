"""Security and robustness holes from review (issue 11), each run as an attacker or a careless user would."""
from __future__ import annotations

import asyncio
import functools
import http.server
import io
import json
import os
import select
import socket
import struct
import threading
import tracemalloc
import uuid
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import classifier
from bench.server import conf_variant
from classifier.images import decode, to_tensor
from classifier.retrain import RetrainError, extract_zip, write_labelled
from classifier.serving.batching import Batcher, BatchingConf
from classifier.serving.reload import Reloader
from conftest import CAT_LABELS, GRADIO_CACHE, PHOTOS, Server, encode, solid, write_colour_graph, write_conf
from test_app import curl
from in_process import InProcessServer

AUTH = ("émile", "pässwörd")  # non-ASCII on purpose (item 3)


# Item 1: Gradio events must refuse files that Gradio did not receive in an upload.
class Attacker:
    """Gradio's queue protocol spoken in raw HTTP (no gradio_client), as an attacker would."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None):
        self.url, self.http = url, httpx.Client(timeout=60)
        if auth:
            login = self.http.post(f"{url}/login", data={"username": auth[0], "password": auth[1]})
            assert login.status_code == 200, login.text
        self.config = self.http.get(f"{url}/config").json()

    def fn_index(self, api_name: str) -> int:
        return next(d["id"] for d in self.config["dependencies"] if d.get("api_name") == api_name)

    def event(self, fn_index: int, data: list) -> tuple[bool, str]:
        """(success, the whole answer as text) for one event, by fn_index, named or not."""
        session = uuid.uuid4().hex
        joined = self.http.post(f"{self.url}/gradio_api/queue/join",
                                json={"data": data, "fn_index": fn_index, "session_hash": session})
        if joined.status_code != 200:
            return False, joined.text
        with self.http.stream("GET", f"{self.url}/gradio_api/queue/data", params={"session_hash": session}) as s:
            for line in s.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed":
                    return bool(message.get("success")), json.dumps(message)
        return False, "the event stream ended without an answer"


def server_file(path: Path | str) -> dict:
    return {"path": str(path), "orig_name": "photo.png", "meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("server-files") / "secret.txt"
    path.write_text(f"TOP-SECRET-{uuid.uuid4().hex}\n")
    return path


@pytest.fixture(scope="module", params=[None, AUTH], ids=["open", "auth"])
def isolated(request, tmp_path_factory):
    """A server with its own flagging and train folders, so every copy it makes can be searched (with the run's
    Gradio cache)."""
    folder = tmp_path_factory.mktemp("isolated")
    args = ["--flagging-dir", str(folder / "flagged"), "--train-dir", str(folder / "trained")]
    if request.param:
        args += ["--auth", ":".join(request.param)]
    running = InProcessServer(*args)
    yield running, folder, request.param
    running.stop()


def copies_of(secret: Path, folder: Path) -> list[Path]:
    """The files holding the secret's content in a server's own folder, or in the run's Gradio cache."""
    content = secret.read_bytes()
    return [p for place in (folder, GRADIO_CACHE) for p in place.rglob("*")
            if p.is_file() and p.stat().st_size < 10 ** 7 and content in p.read_bytes()]


def test_the_flag_train_download_chain_reads_no_server_file(isolated, secret):
    running, folder, auth = isolated
    attacker = Attacker(running.url, auth)
    flagged, _ = attacker.event(attacker.fn_index("Flag"), [server_file(secret), {"label": "x"}])
    listed, listing = attacker.event(attacker.fn_index("flagged"), [])
    rows = json.loads(listing)["output"]["data"][0]["data"] if listed else []  # "no flagged photos" is an error
    cache = str(GRADIO_CACHE)
    attacker.event(attacker.fn_index("train"),
                   [None, {"headers": ["photo", "model said", "label"], "data": [[r[0], r[1], cache] for r in rows]},
                    100])
    assert not flagged, "Flag accepted a file that was never uploaded"
    assert copies_of(secret, folder) == []
    for leaked in [GRADIO_CACHE / "flagged_0.txt", *GRADIO_CACHE.rglob("*.txt")]:
        answer = attacker.http.get(f"{running.url}/gradio_api/file={leaked}")
        assert secret.read_text() not in answer.text


def test_every_event_of_the_page_refuses_a_path_that_was_not_uploaded(isolated, secret):
    running, folder, auth = isolated
    attacker = Attacker(running.url, auth)
    events = [d for d in attacker.config["dependencies"] if d.get("backend_fn") and d["inputs"]]
    assert len(events) >= 5  # classify, Flag, load_example, train, serve_trained
    for dependency in events:
        success, answer = attacker.event(dependency["id"], [server_file(secret)] * len(dependency["inputs"]))
        assert not success, f"event {dependency['id']} ({dependency.get('api_name')}) accepted {secret}: {answer}"
        assert secret.read_text().strip() not in answer
    assert copies_of(secret, folder) == []


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "real photo", "loopback URL"])
def test_classify_refuses_pipes_devices_server_photos_and_private_urls_and_keeps_answering(isolated, tmp_path, kind,
                                                                                          photo_server):
    running, _, auth = isolated
    if kind == "fifo":
        path = tmp_path / "pipe.jpg"
        os.mkfifo(path)
    elif kind == "loopback URL":  # Gradio downloads URLs given for a file: never from a private address
        path = photo_server + "/cat.jpeg"
    else:
        path = Path(kind) if kind.startswith("/") else PHOTOS / "cat.jpeg"
    attacker = Attacker(running.url, auth)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(
        answer=attacker.event(attacker.fn_index("classify"), [server_file(path)])), daemon=True)
    thread.start()
    thread.join(30)
    assert outcome, f"/classify with {kind} did not answer within 30 s"
    success, answer = outcome["answer"]
    assert not success and not any(label in answer for label in CAT_LABELS)  # not even an existence oracle
    assert httpx.get(f"{running.url}/healthz", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def photo_server():
    """A plain HTTP server on loopback with the test photos: what an internal service looks like."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(PHOTOS))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


# Item 2: a chunked multipart body is refused as soon as it passes the limit, whatever the headers say.
@pytest.fixture(scope="module")
def small_limit_server(tmp_path_factory):
    conf = conf_variant(tmp_path_factory.mktemp("small"), limits={"max_bytes": 150_000})
    running = Server("--conf", str(conf), "--no-train")  # a process: what it reads races the sender's threads
    yield running
    running.stop()


def send_chunked_multipart(url: str, total: int) -> tuple[int, int]:
    """Streams one file part of `total` bytes without a Content-Length; returns (status, bytes sent before the
    server answered)."""
    host, port = url.removeprefix("http://").split(":")
    boundary = "b0undary"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall((f"POST /service HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"big.jpg\"\r\n"
                "Content-Type: image/jpeg\r\n\r\n").encode()
        chunk, sent = b"\xff" * 65536, 0
        sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # the server answered and closed: read its answer
                break
            sent += len(chunk)
        else:
            sock.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    return int(answer.split(b" ")[1]), sent


def test_a_chunked_multipart_body_stops_at_the_limit(small_limit_server):
    limit = 32 * 150_000  # MAX_FILES × max_bytes
    status, sent = send_chunked_multipart(small_limit_server.url, 12 * limit)
    assert status == 413
    assert sent < 4 * limit, f"the server read {sent} bytes before refusing"  # (socket buffers hold some)


# Item 8: media types are case-insensitive.
def test_multipart_content_type_is_case_insensitive(small_limit_server, tmp_path):
    body = tmp_path / "multipart.bin"
    body.write_bytes(b'--XyZ\r\nContent-Disposition: form-data; name="a"; filename="cat.jpeg"\r\n'
                     b"Content-Type: image/jpeg\r\n\r\n" + (PHOTOS / "cat.jpeg").read_bytes() + b"\r\n--XyZ--\r\n")
    status, results, _ = curl("-H", "Content-Type: Multipart/Form-Data; boundary=XyZ", "--data-binary",
                              f"@{body}", f"{small_limit_server.url}/service")
    assert status == 200 and results[0][0][0] in CAT_LABELS


# Item 3: credentials are compared as bytes.
def test_non_ascii_credentials_get_401_or_200_never_500(isolated):
    running, _, auth = isolated
    status, _, _ = curl("-X", "PUT", "-u", "é:x", "--data-binary", "@" + str(PHOTOS / "cat.jpeg"),
                        f"{running.url}/service")
    assert status == (401 if auth else 200)  # without --auth, credentials are not looked at
    if auth:
        status, _, _ = curl("-X", "POST", "-u", "é:x", f"{running.url}/admin/reload")
        assert status == 401
        status, result, _ = curl("-u", ":".join(auth), "-T", str(PHOTOS / "cat.jpeg"), f"{running.url}/service")
        assert status == 200 and result[0][0] in CAT_LABELS


# Item 4: a version refused while half-written is served once it is complete.
def test_a_refused_version_is_retried_when_its_files_change(tmp_path):
    write_colour_graph(tmp_path / "models" / "1")
    conf = write_conf(tmp_path, model_dir="models")
    model = classifier.load(conf)
    photo = tmp_path / "red.png"
    solid("red").save(photo)
    reloader = Reloader(conf, Batcher(model), photo)
    half = tmp_path / "models" / "2"
    half.mkdir()
    (half / "label_map.txt").write_text("blue\ngreen\nred\n")  # the copy has not reached the graph yet
    assert reloader.poll_once() is False and reloader.model.version == 1
    assert reloader.poll_once() is False  # unchanged: not retried every time
    write_colour_graph(half)
    (half / "label_map.txt").write_text("blue\ngreen\nred\n")
    assert reloader.poll_once() is True and reloader.model.version == 2
    assert reloader.model.execute([photo], 1)[0][0][0] == "blue"


# Item 5: main_file is a plain dotted module name.
@pytest.mark.parametrize("main_file", [".tmp.x.evil", "../evil", "/tmp/evil", "a/b", "evil.py", "a..b", ""])
def test_main_file_must_be_a_dotted_module_name(tmp_path, main_file):
    evil = tmp_path / "evil.py"
    evil.write_text("raise SystemExit('evil code ran')\n")
    write_colour_graph(tmp_path / "model")
    conf = write_conf(tmp_path, main_file=main_file)
    with pytest.raises(classifier.ConfError, match="main_file"):
        classifier.load(conf)


def test_an_absolute_path_in_disguise_is_refused(tmp_path):
    outside = Path("/tmp") / f"x{uuid.uuid4().hex[:8]}"
    outside.mkdir()
    try:
        (outside / "evil.py").write_text("raise SystemExit('evil code ran')\n")
        write_colour_graph(tmp_path / "model")
        conf = write_conf(tmp_path, main_file=f".tmp.{outside.name}.evil")
        with pytest.raises(classifier.ConfError, match="main_file"):
            classifier.load(conf)
    finally:
        (outside / "evil.py").unlink()
        outside.rmdir()


# Item 6: every request in a batch gets an answer, whatever the user's execute() returns.
class DropsOne:
    def __init__(self, model):
        self.model = model

    def execute(self, data, batch_size):
        return self.model.execute([d.body for d in data], batch_size)[:-1]


def test_a_short_result_list_is_an_error_for_every_request(default_model, photo_bytes):
    async def go():
        batcher = Batcher(DropsOne(default_model), BatchingConf(max_batch_size=4, max_batch_wait_ms=50))
        try:
            return await asyncio.wait_for(asyncio.gather(
                *(batcher.classify(photo_bytes[n]) for n in ("cat.jpeg", "coffee.jpeg", "chelsea.png")),
                return_exceptions=True), 60)
        finally:
            await batcher.close()

    results = asyncio.run(go())
    assert len(results) == 3 and all(isinstance(r, Exception) and "results for" in str(r) for r in results)


# Item 7: every bad zip is a clear RetrainError.
def good_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("red/a.png", encode(solid("red")) * 20)
    return buffer.getvalue()


def patched(data: bytes, offset_of: str, field_offset: int, fmt: str, value: int) -> bytes:
    """Sets one header field in the local header ("PK\\3\\4") or the central directory ("PK\\1\\2")."""
    signature = {"local": b"PK\x03\x04", "central": b"PK\x01\x02"}[offset_of]
    at = data.index(signature) + field_offset
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt):]


def encrypted() -> bytes:
    data = good_zip()
    data = patched(data, "local", 6, "<H", 1)
    return patched(data, "central", 8, "<H", 1)


def aes() -> bytes:
    data = good_zip()
    data = patched(data, "local", 8, "<H", 99)
    return patched(data, "central", 10, "<H", 99)


def damaged_deflate() -> bytes:
    data = bytearray(good_zip())
    start = data.index(b"PK\x03\x04") + 30 + len("red/a.png")
    data[start:start + 40] = os.urandom(40)
    return bytes(data)


@pytest.mark.parametrize("make", [encrypted, aes, damaged_deflate], ids=["encrypted", "aes", "damaged"])
def test_every_bad_zip_is_a_clear_error(tmp_path, make):
    path = tmp_path / "photos.zip"
    path.write_bytes(make())
    with pytest.raises(RetrainError, match="zip"):
        extract_zip(path, tmp_path / "out")


@pytest.mark.parametrize("label", ["/tmp/gradio", "../up", "a/b", "..", ".hidden", "a\\b", "x\x00y", "  "])
def test_labels_written_to_disk_are_plain_folder_names(tmp_path, label):
    photo = tmp_path / "red.png"
    solid("red").save(photo)
    if not label.strip():
        write_labelled([(photo, label)], tmp_path / "images")  # an empty label leaves the photo out
        assert list((tmp_path / "images").iterdir()) == []
        return
    with pytest.raises(RetrainError, match="label"):
        write_labelled([(photo, label)], tmp_path / "images")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) in (["red.png"],
                                                                                       ["images", "red.png"])


# Item 9: 16-bit images are reduced before the float conversion.
def sixteen_bit_png(side: int = 7000) -> bytes:
    gradient = (np.add.outer(np.arange(side), np.arange(side)) * (65535 / (2 * side))).astype(np.uint16)
    return encode(Image.fromarray(gradient), "PNG")


def test_a_large_16_bit_png_is_reduced_before_the_float_conversion():
    data = sixteen_bit_png()
    assert len(data) < 2_000_000  # small on the wire, 7000×7000 inside the pixel limit
    tracemalloc.start()
    image = decode(data, size_hint=(224, 224))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert image.mode == "RGB" and max(image.size) < 1000
    assert peak < 120e6, f"decoding took {peak / 1e6:.0f} MB of numpy/Python memory"
    reference = np.asarray(Image.fromarray((np.add.outer(np.arange(224), np.arange(224)) * (255 / 448))
                                           .astype(np.uint8)).convert("RGB"), np.float32) / 255
    assert np.abs(to_tensor(image, (224, 224)) - reference).mean() < 0.02
