"""The page's per-visitor bounds, without a browser: one live stream per visitor; the classes made on the Train tab
(their count, their photos' count and bytes, names that are no paths), and what deleting them leaves."""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest

from classifier.images import ImageError, Limits
from classifier.serving.ui import class_builder
from classifier.serving.ui.class_builder import Classes
from classifier.serving.ui.live import IDLE_SECONDS, LiveStreams
from conftest import PHOTOS


def test_a_visitor_has_one_live_stream_until_it_goes_idle():
    streams = LiveStreams()
    assert streams.admit("10.0.0.1", "tab-a", now=0.0) and streams.admit("10.0.0.1", "tab-a", now=1.0)
    assert not streams.admit("10.0.0.1", "tab-b", now=1.5)  # a second tab of the same visitor
    assert streams.admit("10.0.0.2", "tab-c", now=1.5)  # another visitor
    assert streams.admit("10.0.0.1", "tab-b", now=1.0 + IDLE_SECONDS + 0.1)  # the first one went quiet
    assert len(streams._holders) == 2  # one entry per visitor, the idle ones dropped


def test_the_classes_made_on_the_page_are_bounded_and_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(class_builder, "MAX_CLASSES", 2)
    monkeypatch.setattr(class_builder, "MAX_PHOTOS", 3)
    classes = Classes(tmp_path)
    assert classes.add_class("Coffee mugs") == "coffee mugs" and classes.add_class("cats") == "cats"
    with pytest.raises(gr.Error, match="At most 2 classes"):
        classes.add_class("dogs")
    for name in ("../etc", "a/b", "<img src=x>", ""):
        with pytest.raises(gr.Error):
            classes.add_class(name)
    cat = (PHOTOS / "cat.jpeg").read_bytes()
    with pytest.raises(ImageError, match="larger than the limit"):  # the serving model's limits apply
        classes.add("cats", cat, Limits(max_bytes=1000))
    for _ in range(3):
        classes.add("cats", cat, Limits())
    with pytest.raises(gr.Error, match="At most 3 photos"):
        classes.add("coffee mugs", np.zeros((32, 32, 3), np.uint8), Limits())
    with pytest.raises(gr.Error, match="No such class"):
        classes.remove("dogs")
    assert classes.counts() == {"cats": 3, "coffee mugs": 0}
    assert [name for _, name in classes.thumbnails("cats")] == ["00001.jpg", "00002.jpg", "00003.jpg"]
    classes.remove("cats", "00002.jpg")
    assert classes.counts()["cats"] == 2 and len(classes.thumbnails("cats")) == 2
    classes.delete()
    assert not classes.folder.exists() and classes.names() == [] and classes.thumbnails("cats") == []


def test_the_classes_quota_is_per_client_address_across_sessions_and_keeps_what_was_sent(tmp_path, monkeypatch):
    """Issue 38 item 10: made-up sessions multiplied a visitor's quota, and striped PNGs re-encoded as full-size
    JPEGs took 140 MB of disk for 1.6 MB sent."""
    import io

    from PIL import Image

    monkeypatch.setattr(class_builder, "MAX_PHOTOS", 3)
    quota = class_builder.Quota()
    sessions = [Classes(tmp_path, quota, "10.0.0.1") for _ in range(3)]  # one address, three sessions
    cat = (PHOTOS / "cat.jpeg").read_bytes()
    for session in sessions:
        session.add_class("cats")
    for session in sessions:
        session.add("cats", cat, Limits())
    with pytest.raises(gr.Error, match="At most 3 photos"):
        sessions[0].add("cats", cat, Limits())
    other = Classes(tmp_path, quota, "10.0.0.2")  # another address has its own
    other.add_class("cats")
    other.add("cats", cat, Limits())
    sessions[1].delete()  # a session's photos, deleted, are given back
    sessions[0].add("cats", cat, Limits())

    stripes = Image.fromarray((np.indices((3000, 3000)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    buffer = io.BytesIO()
    stripes.save(buffer, "PNG", optimize=True)
    other.add("cats", buffer.getvalue(), Limits())
    kept = sorted((other.folder / "cats").iterdir())[-1]
    assert kept.suffix == ".png" and kept.read_bytes() == buffer.getvalue()  # as sent, not re-encoded
    frame = np.zeros((3000, 4000, 3), np.uint8)  # not an encoded photo: a JPEG of at most 1024 px
    other.add("cats", frame, Limits())
    assert Image.open(sorted((other.folder / "cats").iterdir())[-1]).size == (1024, 768)


def test_the_train_folder_keeps_the_newest_models_and_the_one_serving(tmp_path):
    """Issue 38 item 2's aside: each Train run left ~53 MB in the train folder, never removed."""
    import os

    from classifier.serving.ui.train import prune_trained

    for number in range(6):
        folder = tmp_path / f"model-{number}"
        (folder / "saved").mkdir(parents=True)
        os.utime(folder, (number, number))
    (tmp_path / ".classes-x").mkdir()  # not a model: never pruned
    prune_trained(tmp_path, serving=[tmp_path / "model-0" / "saved"], keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".classes-x", "model-0", "model-3", "model-4", "model-5"]
