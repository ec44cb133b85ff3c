"""Third review (issue 38), each item as the attacker ran it: files named by events, trust by Host, floods."""
from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import gradio as gr
import httpx
import pytest

from classifier.serving.ui.file_gate import answer_paths, payload_paths
from conftest import AUTH, GRADIO_CACHE, ROOT
from test_hole_files import event_within, meta_less
from test_security import Attacker, copies_of


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("server-files") / "secret.txt"
    path.write_text(f"TOP-SECRET-{uuid.uuid4().hex}\n")
    return path


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


# Item 2: trust by who is asking. A page of another site whose name re-resolves to 127.0.0.1 sends its own Host.
@pytest.mark.parametrize("auth", [None, AUTH], ids=["open", "auth"])
def test_another_sites_host_origin_and_cookie_are_refused(guarded, auth):
    running, _ = guarded(auth)
    port = running.url.rsplit(":", 1)[1]
    for path in ("/", "/config", "/service", "/gradio_api/upload", "/admin/reload"):
        rebound = httpx.post(f"{running.url}{path}", headers={"Host": f"rebind.evil.example:{port}"}, auth=auth,
                             content=b"x", timeout=10)
        assert rebound.status_code == 400 and "host" in rebound.text.lower(), (path, rebound.text)
    assert httpx.get(f"{running.url}/healthz", headers={"Host": f"localhost:{port}"}, timeout=10).status_code == 200
    # No CORS for another origin, on our routes or Gradio's (which reflected any origin with credentials).
    for path in ("/config", "/gradio_api/info", "/service"):
        simple = httpx.get(f"{running.url}{path}", headers={"Origin": "https://evil.example"}, auth=auth, timeout=10)
        preflight = httpx.options(f"{running.url}{path}", timeout=10, headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        for answer in (simple, preflight):
            assert "access-control-allow-origin" not in answer.headers, (path, answer.headers)
            assert "access-control-allow-credentials" not in answer.headers
    if auth:  # the login cookie is not sent along with another site's requests
        login = httpx.post(f"{running.url}/login", data={"username": auth[0], "password": auth[1]}, timeout=10)
        cookies = login.headers.get_list("set-cookie")
        assert cookies and all("samesite=lax" in c.lower() and "samesite=none" not in c.lower() for c in cookies)


# Item 4: the actions that change what is served need the login; without --auth they are refused.
def test_reload_needs_the_login_and_another_sites_form_post_cannot_trigger_it(guarded):
    running, _ = guarded(None)
    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "text/plain", "Origin": "https://x.example"}):
        answer = httpx.post(f"{running.url}/admin/reload", headers=headers, content=b"", timeout=30)
        assert answer.status_code == 403 and "--auth" in answer.json()["error"], answer.text


def test_a_burst_of_reloads_loads_the_model_once(tmp_path, monkeypatch):
    """In-process, on a tiny model: 30 reloads asked at once join the one under way (each load was a model more
    in memory: 363 at once took the server from 523 to 1,686 MB)."""
    import threading

    import classifier
    from classifier.serving import reload
    from classifier.serving.batching import Batcher
    from conftest import solid, write_colour_graph, write_conf

    write_colour_graph(tmp_path / "models" / "1")
    conf = write_conf(tmp_path, model_dir="models")
    photo = tmp_path / "red.png"
    solid("red").save(photo)
    reloader = reload.Reloader(conf, Batcher(classifier.load(conf)), photo)
    loads, gate = [], threading.Event()

    def slow_load(path):
        loads.append(path)
        gate.wait(10)  # every other reload arrives while this one is under way
        return classifier.load(path)

    monkeypatch.setattr(reload, "load", slow_load)
    futures = [reloader.reload_shared("burst") for _ in range(30)]
    gate.set()
    models = {id(future.result(timeout=60)) for future in futures}
    assert len(loads) == 1 and len(models) == 1
    assert reloader.reload("after") is not None and len(loads) == 2  # a reload after it loads again


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


# Item 7: decoding work is bounded before it is done.
def progressive_jpeg(side: int, repeats: int) -> bytes:
    """A progressive JPEG whose last scan is repeated `repeats` times (each repeat is decoded again)."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    Image.fromarray(np.dstack([np.add.outer(ramp, ramp // 2)] * 3)).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last_scan:end] * repeats + data[end:]


def png_of_empty_chunks(chunks: int) -> bytes:
    import struct
    import zlib

    from conftest import encode, solid

    png = encode(solid("red", (8, 8)))
    empty = struct.pack(">I", 0) + b"prVt" + struct.pack(">I", zlib.crc32(b"prVt"))
    return png[:33] + empty * chunks + png[33:]  # after IHDR (8 + 25 bytes)


def test_decoder_bombs_are_refused_before_decoding_and_real_photos_still_decode():
    from classifier.images import ImageTooLarge, decode
    from conftest import PHOTOS

    for bomb in (progressive_jpeg(4000, 200), png_of_empty_chunks(200_000)):  # refused from their structure
        with pytest.raises(ImageTooLarge, match="too much work"):
            decode(bomb)
    assert decode(progressive_jpeg(4000, 0)).size == (4000, 4000)  # a real progressive photo
    assert decode(progressive_jpeg(400, 50)).size == (400, 400)  # a small one may have many scans
    assert decode(png_of_empty_chunks(100)).size == (8, 8)
    for photo in PHOTOS.iterdir():
        if photo.suffix in (".jpeg", ".jpg", ".png"):
            decode(photo.read_bytes())


# Item 8: /explain held every waiting request's body; now only the admitted ones, the rest get 503 unread.
def test_explanations_past_their_places_get_503_before_their_body_is_read():
    import asyncio

    from fastapi import FastAPI

    from classifier.images import CorruptImage, Limits
    from classifier.serving import explanations

    explainer = explanations.Explainer(batcher=None)
    released = asyncio.Event()

    async def slow_explain(body, label):
        await released.wait()
        raise CorruptImage("not explained")

    explainer.explain = slow_explain
    app = FastAPI()
    app.include_router(explanations.create_router(explainer, Limits()))
    places = explanations.EXPLANATIONS_AT_ONCE + explanations.EXPLANATIONS_WAITING

    async def run() -> tuple[list[int], int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            held = [asyncio.create_task(client.post("/explain", content=b"photo")) for _ in range(places)]
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
