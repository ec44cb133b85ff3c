"""Bodies and connections: the login comes before the body, a body past its limit is refused before or while it
streams and closes the connection, JSON is bounded before it is parsed, uploads have a budget, and no client
holds more than its share of open streams."""
from __future__ import annotations

import base64
import contextlib
import json
import select
import socket
import time
import uuid
from types import SimpleNamespace

import httpx
import pytest

from bench.server import conf_variant
from classifier.serving.connections import LINGER_BYTES
from conftest import AUTH, PHOTOS, Server
from test_security import Attacker

AFTER = LINGER_BYTES + 8_000_000  # what the server reads after answering before it closes, and socket buffers
MAX_BYTES = 150_000  # the image limit of this module's server: request bodies up to 32 × that (4.8 MB)
BASIC = "Basic " + base64.b64encode(":".join(AUTH).encode()).decode()
PART = (b'--b0undary\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n")  # a multipart body's first part, whose file then never ends


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A server under --auth with small limits (150 KB images; Gradio uploads as small: --no-train). A process: what
    it reads after answering is measured against the clock, which the tests' own threads would skew in-process."""
    conf = conf_variant(tmp_path_factory.mktemp("small"), limits={"max_bytes": MAX_BYTES})
    running = Server("--conf", str(conf), "--no-train", "--auth", ":".join(AUTH), "--streams-per-client", "4")
    yield running
    running.stop()


def send_until_answered(url: str, path: str, headers: dict[str, str], total: int, chunked: bool = False,
                        seconds: float = 30) -> tuple[int, int, int]:
    """Sends a body of `total` bytes (or until the server answers); returns (status, bytes sent before the answer,
    bytes the server still took after it, within 2 s: at most LINGER_BYTES and the socket buffers when it closes
    the connection, as it must)."""
    host, port = url.removeprefix("http://").split(":")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
    chunk = b"0" * 65536
    piece = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
    sent, after, answer = 0, 0, b""
    deadline = time.monotonic() + seconds
    with socket.create_connection((host, int(port)), timeout=seconds) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        if "multipart" in headers.get("Content-Type", ""):
            sock.sendall(b"%x\r\n%s\r\n" % (len(PART), PART) if chunked else PART)
        sock.setblocking(False)
        while b"\r\n" not in answer and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
            elif sent < total and select.select([], [sock], [], 0.01)[1]:
                try:
                    sent += sock.send(piece)
                except BlockingIOError:
                    continue
                except OSError:  # reset: the answer may have been lost with it
                    break
            elif sent >= total:
                time.sleep(0.01)
        closed_by = time.monotonic() + 3
        while time.monotonic() < closed_by:  # does the server keep reading (and throwing away) the body?
            try:
                if select.select([sock], [], [], 0)[0] and not sock.recv(65536):
                    break  # EOF: it closed the connection
                if select.select([], [sock], [], 0.01)[1]:
                    after += sock.send(piece)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                break  # reset: closed
    assert answer.startswith(b"HTTP/1.1 "), f"no answer to {path} after {sent} bytes"
    return int(answer.split(b" ")[1]), sent, after


@pytest.mark.parametrize("path", ["/gradio_api/run/predict", "/gradio_api/queue/join", "/service", "/v1/models/x:predict"])
def test_without_the_login_a_large_body_is_refused_before_it_is_read(small, path):
    status, sent, after = send_until_answered(small.url, path, {"Content-Type": "application/json"}, 52_000_000)
    assert status == 401
    assert sent < 8_000_000, f"{path} read {sent} bytes before answering 401"  # (socket buffers hold some)
    assert after < AFTER, f"{path} went on reading {after} bytes after its 401"


def test_logged_in_gradio_json_is_capped(small):
    attacker = Attacker(small.url, AUTH)
    big = {"data": ["x" * 5_000_000], "fn_index": 0, "session_hash": uuid.uuid4().hex}
    answer = attacker.http.post(f"{small.url}/gradio_api/queue/join", json=big)
    assert answer.status_code == 413 and "limit of 4194304 bytes" in answer.json()["error"]
    assert answer.headers.get("connection") == "close"


@pytest.mark.parametrize("path, content_type", [
    ("/service", "multipart/form-data; boundary=b0undary"), ("/service", "image/jpeg"), ("/explain", "image/jpeg"),
    ("/v1/models/checkpoint_dir:predict", "application/json"),
    ("/v2/models/checkpoint_dir/infer", "application/json"),
    ("/gradio_api/upload", "multipart/form-data; boundary=b0undary")])
def test_a_chunked_body_past_the_limit_gets_413_and_the_connection_closes(small, path, content_type):
    headers = {"Content-Type": content_type, "Authorization": BASIC}
    if path.startswith("/gradio_api"):
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in Attacker(small.url, AUTH).http.cookies.items())
    status, sent, after = send_until_answered(small.url, path, headers, 2_000_000_000, chunked=True)
    assert status == 413
    assert sent < 4 * 32 * MAX_BYTES + 2**23, f"{path}: {sent} bytes read before the 413"
    assert after < AFTER, f"{path}: the server went on reading {after} bytes after its 413"


def test_a_declared_length_past_the_limit_is_refused_unread(small):
    status, sent, after = send_until_answered(small.url, "/service", {"Authorization": BASIC}, 500_000_000)
    assert status == 413 and sent < 8_000_000 and after < AFTER


def test_event_streams_need_the_login_and_are_capped_per_client(small):
    url = f"{small.url}/gradio_api/heartbeat/{uuid.uuid4().hex}"
    for _ in range(20):  # without the login: refused at once, nothing held open
        assert httpx.get(url, timeout=5).status_code == 401
    attacker = Attacker(small.url, AUTH)
    with contextlib.ExitStack() as streams:
        for _ in range(4):  # --streams-per-client 4
            stream = streams.enter_context(attacker.http.stream("GET", f"{small.url}/gradio_api/heartbeat/"
                                                                       f"{uuid.uuid4().hex}"))
            assert stream.status_code == 200
        fifth = attacker.http.get(f"{small.url}/gradio_api/heartbeat/{uuid.uuid4().hex}")
        assert fifth.status_code == 429 and "Retry-After" in fifth.headers
        assert httpx.get(f"{small.url}/healthz", timeout=5).status_code == 200
        served = httpx.put(f"{small.url}/service", content=(PHOTOS / "cat.jpeg").read_bytes()[:MAX_BYTES],
                           auth=AUTH, timeout=30)
        assert served.status_code in (200, 400)  # answered (cat.jpeg cut to the limit may not decode)
    # The closed ones are given back once the server notices the client went (Gradio looks every ~0.25 s).
    deadline, status = time.monotonic() + 20, 429
    while status == 429 and time.monotonic() < deadline:
        with attacker.http.stream("GET", f"{small.url}/gradio_api/heartbeat/{uuid.uuid4().hex}") as stream:
            status = stream.status_code
        time.sleep(0.2)
    assert status == 200


def test_the_page_and_its_login_still_work_under_auth(small):
    from gradio_client import Client, handle_file

    assert httpx.get(f"{small.url}/", timeout=10).status_code == 200
    assert httpx.get(f"{small.url}/config", timeout=10).status_code == 401
    client = Client(small.url, auth=AUTH, verbose=False)
    try:
        photo = PHOTOS / "coffee.jpeg"
        assert photo.stat().st_size < MAX_BYTES
        answer = client.predict(handle_file(str(photo)), api_name="/classify")
        assert answer["label"] in {"espresso", "cup", "coffee mug"}
    finally:
        client.close()  # its heartbeat stream would hold the server's shutdown
    assert json.loads(httpx.get(f"{small.url}/readyz", timeout=5).text)["status"] == "ready"


# Item 3 (and 11's 5,000-digit integer): a protocol body is bounded by what it holds, not only by its brackets.
def test_a_body_of_numbers_is_refused_before_parsing_and_a_huge_integer_is_a_400():
    from classifier.serving.protocols import ProtocolError, json_object

    flood = b'{"inputs": [{"data": [' + b"0," * 5_000_000 + b'0]}]}'
    with pytest.raises(ProtocolError) as refused:
        json_object(flood, "the request", max_containers=10_000, max_values=4_817_920)
    assert refused.value.status == 413 and "JSON values" in str(refused.value)
    with pytest.raises(ProtocolError) as huge:
        json_object(b'{"instances": [' + b"9" * 5000 + b"]}", "the request", 10_000, 10_000)
    assert huge.value.status == 400


def test_a_gzip_of_numbers_gets_413_over_http(guarded):
    import gzip

    running, _ = guarded(None)
    body = gzip.compress(b'{"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": ['
                         + b"0," * 16_000_000 + b"0]}]}")
    assert len(body) < 200_000
    for url in ("/v2/models/checkpoint_dir/infer", "/v1/models/checkpoint_dir:predict"):
        answer = httpx.post(f"{running.url}{url}", content=body, timeout=60,
                            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert answer.status_code == 413 and "JSON values" in answer.json()["error"], answer.text
    digits = httpx.post(f"{running.url}/v1/models/checkpoint_dir:predict", timeout=60,
                        content=b'{"instances": [' + b"9" * 5000 + b"]}")
    assert digits.status_code == 400, digits.text


# Item 8: /explain held every waiting request's body; now only the admitted ones, the rest get 503 unread.
def test_explanations_past_their_places_get_503_before_their_body_is_read():
    import asyncio

    from fastapi import FastAPI

    from classifier.images import CorruptImage, Limits
    from classifier.serving import explanations
    from classifier.serving.access import Access

    explainer = explanations.Explainer(batcher=None)
    released = asyncio.Event()

    async def slow_explain(body, label):
        await released.wait()
        raise CorruptImage("not explained")

    explainer.explain = slow_explain
    app = FastAPI()
    async def get(name):
        return SimpleNamespace(explainer=explainer, limits=Limits())

    one_model = SimpleNamespace(get=get, access=Access())  # the repository, as the route asks it
    app.include_router(explanations.create_router(one_model))
    places = explanations.EXPLANATIONS_AT_ONCE + explanations.EXPLANATIONS_WAITING

    async def run() -> tuple[list[int], int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            held = [asyncio.create_task(client.post("/explain", content=b"photo")) for _ in range(places)]
            async with asyncio.timeout(30):  # a failure, not a hung run
                while explainer.admitted < places:
                    await asyncio.sleep(0.01)
            read = []

            async def body():  # the body of the request past the places: never read
                read.append(True)
                yield b"photo"
            refused = await client.post("/explain", content=body())
            released.set()
            answers = await asyncio.gather(*held)
            return [answer.status_code for answer in answers], refused.status_code, read

    statuses, refused, read = asyncio.run(run())
    assert refused == 503 and not read
    assert statuses == [400] * places and explainer.admitted == 0  # every admitted one was answered


# Item 9: uploads are bounded per client and in total, over the time they are kept.
def test_the_upload_budget_counts_per_client_and_in_total_and_forgets_after_the_retention():
    from classifier.serving.guard import UploadBudget

    budget = UploadBudget(per_client=100, total=150, keep_seconds=10)
    assert budget.charge("a", 60, now=0) is None and budget.charge("a", 40, now=1) is None
    assert "this client has uploaded" in budget.charge("a", 1, now=2)
    assert budget.charge("b", 50, now=3) is None
    assert "the server holds" in budget.charge("c", 1, now=4)
    assert budget.charge("a", 60, now=10.5) is None  # the first 60 are deleted by now; the 40 still count
    assert "this client" in budget.charge("a", 1, now=10.6)


def test_uploads_past_the_budget_get_429_before_or_while_they_stream():
    import asyncio

    from classifier.serving.guard import Guard, GuardConf, UploadBudget

    stored: list[int] = []

    async def app(scope, receive, send):  # stands in for Gradio's upload route: reads the body, answers 200
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        stored.append(size)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = Guard(app, GuardConf(body_limits=[("/gradio_api/upload", 10 ** 6)],
                                 uploads=UploadBudget(per_client=250_000, total=10 ** 6, keep_seconds=900)))

    async def run() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://test") as client:
            async def chunked():
                for _ in range(10):
                    yield b"x" * 20_000
            statuses = [(await client.post("/gradio_api/upload", content=b"x" * 200_000)).status_code,
                        (await client.post("/gradio_api/upload", content=b"x" * 100_000)).status_code,
                        (await client.post("/gradio_api/upload", content=chunked())).status_code]
            other = await client.post("/service", content=b"x" * 200_000)  # other routes are not uploads
            return [*statuses, other.status_code]

    assert asyncio.run(run()) == [200, 429, 429, 200]
    assert stored == [200_000, 200_000]  # the refused ones never reached the app whole
