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
