"""Ray Serve: a local Ray instance on loopback, two replicas, the same /service contract and results."""
from __future__ import annotations

import os

import pytest

from conftest import CAT_LABELS, PHOTOS, ROOT
from test_app import curl

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="module")
def ray_url():
    from ray import serve

    from bench.ray_replicas import free_port, start

    import ray

    try:
        url = start(2, free_port())
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_answer_like_the_single_process_app(ray_url, default_model):
    from ray import serve

    status = serve.status().applications["default"].deployments["Classifier"]
    assert status.status == "HEALTHY" and status.replica_states.get("RUNNING") == 2

    photos = ["cat.jpeg", "coffee.png", "motorcycle_left.png", "chelsea.png"]
    for name in photos:
        got, result, _ = curl("-T", str(PHOTOS / name), f"{ray_url}/service")
        [expected] = default_model.execute([PHOTOS / name], 1)
        assert got == 200 and [label for label, _ in result] == [label for label, _ in expected]
        assert all(abs(p - q) <= 1e-5 for (_, p), (_, q) in zip(result, expected))

    got, results, _ = curl("-F", f"a=@{PHOTOS / 'chelsea.png'}", "-F", f"b=@{PHOTOS / 'cat.jpeg'}",
                           f"{ray_url}/service")
    assert got == 200 and len(results) == 2 and all(r[0][0] in CAT_LABELS for r in results)
    got, body, _ = curl("--data-binary", "not an image", f"{ray_url}/service")
    assert (got, body) == (400, {"error": "the data is not a recognised image"})
    assert curl("-X", "GET", f"{ray_url}/service")[0] == 405


def test_concurrent_requests_are_spread_over_both_replicas(ray_url):
    from bench.load import drive_http

    stats = drive_http(ray_url, [(ROOT / "examples" / "cat.jpeg").read_bytes()], 16, 160, keep_bodies=True)
    assert stats.statuses == {200: 160}
    replicas = {line.split(b":", 1)[1].strip() for _, _, head, _ in stats.bodies
                for line in head.split(b"\r\n") if line.lower().startswith(b"x-replica:")}
    assert len(replicas) == 2
