"""Second review, errors (issue 23 items 8 and 10): malformed protocol input is a 400, never a logged traceback,
and a training set too small for its splits is refused in words."""
from __future__ import annotations

import base64

import httpx
import pytest

from classifier.retrain import Options, RetrainError, retrain
from classifier.retrain.data import split_of
from conftest import PHOTOS, encode, solid

MODEL = "checkpoint_dir"  # conf.json names no model_name: the model folder names it


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
    with pytest.raises(RetrainError, match=r"left no testing photos for 10% testing; add photos: about \d+ per class"):
        retrain(Options(image_dir=tmp_path, output_dir=tmp_path / "out", how_many_training_steps=10))
    assert not (tmp_path / "out").exists()
