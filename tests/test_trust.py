"""Whom the server trusts: another site's Host, Origin and cookie are refused; admin actions (reload) need the
login, and a burst of them loads the model once."""
from __future__ import annotations

import httpx
import pytest

from conftest import AUTH

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
