"""One request's cost is bounded: zip and decoder bombs, floods of JSON values and too many images are refused
before the work, malformed protocol input is a 400 (never a traceback), and a large legitimate request never
stalls the others."""
from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import threading
import time
import zipfile

import httpx
import pytest

from conftest import CAT_LABELS, PHOTOS, Server, encode, solid
from test_security import Attacker, server_file

MODEL = "checkpoint_dir"  # conf.json names no model_name: the model folder names it


def zip_of_zeros(members: int, size: int = 20 * 2 ** 20) -> bytes:
    """`members` photos-by-name of `size` zero bytes each: 20 KB apiece once deflated."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        zeros = bytes(size)
        for number in range(members):
            archive.writestr(f"photo{number}.jpg", zeros)
        archive.writestr("cat.jpeg", (PHOTOS / "cat.jpeg").read_bytes())
    return buffer.getvalue()


def captions(answer: str) -> list[str]:
    """The Batch tab's gallery captions, "name: label 81%" or "name: why it failed", in the dropped order."""
    return [item["caption"] for item in json.loads(answer)["output"]["data"][0]]


def test_a_batch_zip_of_large_members_is_read_a_chunk_at_a_time(tmp_path):
    running = Server("--flagging-dir", str(tmp_path / "flagged"), "--no-train")  # a process: its memory peak
    try:
        attacker = Attacker(running.url)
        data = zip_of_zeros(60)  # 1.2 GB unpacked; it used to be read whole before the first photo was classified
        assert len(data) < 2_000_000
        [path] = attacker.http.post(f"{running.url}/gradio_api/upload", files={"files": ("bomb.zip", data)}).json()
        _, peak_before = running.rss_mb()
        done, answer = attacker.event(attacker.fn_index("classify_batch"), [[server_file(path)], "as dropped"])
        _, peak_after = running.rss_mb()
    finally:
        running.stop()
    assert done, answer
    shown = captions(answer)
    assert len(shown) == 61 and sum("not a recognised image" in caption for caption in shown) == 60
    assert any(caption.startswith("cat.jpeg: ") and caption.split(": ")[1].rsplit(" ", 1)[0] in CAT_LABELS
               for caption in shown)
    assert peak_after - peak_before < 400, f"the batch took {peak_after - peak_before:.0f} MB more at its peak"


def test_the_unpacked_total_of_a_batch_is_capped(monkeypatch, tmp_path):
    import gradio as gr
    from classifier.images import Limits
    from classifier.serving.ui import batch

    monkeypatch.setattr(batch, "MAX_UNPACKED_BYTES", 50 * 2 ** 20)
    path = tmp_path / "bomb.zip"
    path.write_bytes(zip_of_zeros(5))
    read = []
    with pytest.raises(gr.Error, match="add up to more than 50 MB"):
        for photo in batch.read_photos([str(path)], Limits()):
            read.append(photo)
    assert len(read) == 2  # the third 20 MiB member passes the cap: nothing after it is unpacked


def v2(url: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{MODEL}/infer", content=body, timeout=60, headers=headers)


def test_v2_outputs_are_each_named_once(server, photo_bytes):
    image = base64.b64encode(photo_bytes["cat.jpeg"]).decode()
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]}
    for outputs in ([{"name": "probabilities"}] * 1000, [{"name": "labels"}, {"name": "labels"}],
                    [{"name": "probabilities"}, {"name": "labels"}, {"name": "x"}]):
        answer = v2(server.url, gzip.compress(json.dumps({**request, "outputs": outputs}).encode()),
                    **{"Content-Encoding": "gzip"})
        assert answer.status_code == 400 and "at most once" in answer.json()["error"], answer.text[:200]
    both = v2(server.url, json.dumps({**request, "outputs": [{"name": "probabilities"}, {"name": "labels"}]}).encode())
    assert both.status_code == 200 and both.json()["outputs"][1]["data"][0] in CAT_LABELS


def test_a_json_body_of_millions_of_empty_lists_is_refused_before_it_is_parsed(server):
    bomb = b'{"instances":[' + b"[]," * 15_000_000 + b"[]]}"  # 45 MB: 15 million lists once parsed
    body = gzip.compress(bomb, 1)
    with Stalls(server.url) as stalls:
        answer = httpx.post(f"{server.url}/v1/models/{MODEL}:predict", content=body, timeout=120,
                            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert answer.status_code == 413 and "JSON arrays and objects" in answer.json()["error"], answer.text[:300]
    # The refusal is a byte count, not a parse: /healthz is answered as usual meanwhile (it waited 18 s before).
    assert stalls.longest < 3, f"/healthz waited {stalls.longest:.1f} s"


def test_the_image_count_is_checked_before_anything_is_converted(server):
    many = [{"b64": ""}] * 100_000
    answer = httpx.post(f"{server.url}/v1/models/{MODEL}:predict", json={"instances": many}, timeout=60)
    assert answer.status_code == 400 and "at most 32" in answer.json()["error"]

    # Triton's binary BYTES: 16.5 million zero-length elements (66 MB of length prefixes).
    for shape in ([16_500_000], [32]):
        header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": shape,
                                         "parameters": {"binary_data_size": 4 * 16_500_000}}]}).encode()
        body = gzip.compress(header + struct.pack("<I", 0) * 16_500_000, 1)
        answer = v2(server.url, body, **{"Content-Encoding": "gzip", "Inference-Header-Content-Length":
                                         str(len(header))})
        assert answer.status_code == 400, answer.text[:300]
        assert ("at most 32" if shape[0] > 32 else "holds 32 images but the data has 33") in answer.json()["error"]


class Stalls:
    """Times /healthz every 50 ms in a thread while a request runs: the longest wait is the stall others see."""

    def __init__(self, url: str):
        self.url, self.longest, self.running = url, 0.0, True
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "Stalls":
        self.thread.start()
        time.sleep(0.2)
        return self

    def _poll(self) -> None:
        with httpx.Client(timeout=60) as client:
            while self.running:
                started = time.perf_counter()
                client.get(f"{self.url}/healthz")
                self.longest = max(self.longest, time.perf_counter() - started)
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join(60)


def test_a_large_legitimate_tensor_request_is_answered_without_stalling_the_others(server_process, default_model):
    """On a process of its own: the stall is measured against the clock, which the tests' threads would skew."""
    server = server_process
    import numpy as np
    from classifier.images import decode, to_tensor

    tensor = to_tensor(decode(PHOTOS / "cat.jpeg"), (224, 224))
    request = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [8, 224, 224, 3],
                                      "data": np.stack([tensor] * 8).ravel().tolist()}]}).encode()
    assert len(request) > 20_000_000
    with Stalls(server.url) as stalls:
        answer = v2(server.url, request)
    assert answer.status_code == 200
    probabilities = np.array(answer.json()["outputs"][0]["data"]).reshape(8, -1)
    assert default_model.labels[int(probabilities[0].argmax())] in CAT_LABELS
    assert stalls.longest < 3, f"/healthz waited {stalls.longest:.1f} s"


def test_a_batch_of_real_photos_still_classifies(guarded):
    running, _ = guarded(None)
    attacker = Attacker(running.url)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("cat.jpeg", "coffee.jpeg", "chelsea.png"):
            archive.writestr(f"photos/{name}", (PHOTOS / name).read_bytes())
    [zipped] = attacker.http.post(f"{running.url}/gradio_api/upload",
                                  files={"files": ("photos.zip", buffer.getvalue())}).json()
    [single] = attacker.http.post(f"{running.url}/gradio_api/upload",
                                  files={"files": ("red.png", encode(solid("red")))}).json()
    done, answer = attacker.event(attacker.fn_index("classify_batch"),
                                  [[server_file(zipped), server_file(single)], "as dropped"])
    assert done, answer
    shown = captions(answer)
    assert [caption.split(": ")[0] for caption in shown] == ["cat.jpeg", "coffee.jpeg", "chelsea.png", "red.png"]
    assert shown[0].split(": ")[1].rsplit(" ", 1)[0] in CAT_LABELS


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


def as_header(text: str) -> bytes:
    """Header bytes as a client sends them: Latin-1 where it can (0xB2 is "²" to the server), else UTF-8."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode()


@pytest.mark.parametrize("length", ["²", "٣", "1e3", "-5", "0x10"])
def test_a_header_length_that_is_not_ascii_digits_is_a_400(server, length):
    logged = len(server.output())
    image = base64.b64encode((PHOTOS / "cat.jpeg").read_bytes()).decode()
    body = ('{"inputs":[{"name":"image","datatype":"BYTES","shape":[1],"data":["%s"]}]}' % image).encode()
    answer = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=body, timeout=30,
                        headers={"Inference-Header-Content-Length": as_header(length)})
    assert answer.status_code == 400 and "Inference-Header-Content-Length" in answer.json()["error"]
    assert "Traceback" not in server.output()[logged:]


@pytest.mark.parametrize("path", [f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"])
def test_json_nested_five_thousand_deep_is_a_400(server, path):
    logged = len(server.output())
    body = b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    answer = httpx.post(f"{server.url}{path}", content=body, timeout=30)
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["error"]
    assert "Traceback" not in server.output()[logged:]
