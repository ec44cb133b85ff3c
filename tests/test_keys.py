"""Keys for programs (--api-keys) and admins (--admin-keys): every door takes `Authorization: Bearer KEY`, the
page keeps its login; the rule itself (classifier/serving/access.py) on its own, then a server's doors with real
clients (curl's shapes over httpx, tritonclient's gRPC, gradio_client). SIGHUP's reread: test_operations."""
from __future__ import annotations

import hashlib

import httpx
import pytest

from classifier.serving.access import Access, KeyFile, Role
from conftest import encode, solid, write_colour_graph, write_conf
from in_process import InProcessServer

RED = encode(solid("red"))
PROGRAM, ADMIN, HASHED = "prog-key-1", "admin-key-1", "hashed-key-2"


def key_file(path, *lines: str):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_key_file_holds_keys_and_hashes_and_keeps_them_when_a_reread_is_broken(tmp_path, caplog):
    keys = KeyFile(key_file(tmp_path / "keys", "# programs", "", f"  {PROGRAM}  ",
                            "sha256:" + hashlib.sha256(HASHED.encode()).hexdigest()))
    assert keys.holds(PROGRAM) and keys.holds(HASHED)
    assert not keys.holds("sha256:" + hashlib.sha256(HASHED.encode()).hexdigest())  # a hash is not a key
    assert not keys.holds("") and not keys.holds(PROGRAM + "x") and not keys.holds("# programs")
    assert PROGRAM.encode() not in repr(keys.digests).encode()  # only the digests are held

    key_file(tmp_path / "keys", "sha256:abc")  # malformed: the old keys still hold, the log says where
    keys.reload()
    assert keys.holds(PROGRAM) and "line 1" in caplog.text and PROGRAM not in caplog.text
    key_file(tmp_path / "keys", "new-key")
    keys.reload()
    assert keys.holds("new-key") and not keys.holds(PROGRAM)
    with pytest.raises(ValueError, match="line 2"):
        KeyFile(key_file(tmp_path / "bad", "ok", "sha256:" + "zz" * 32))


def test_who_may_call_and_who_may_change_what_is_served(tmp_path):
    api = KeyFile(key_file(tmp_path / "api", PROGRAM))
    admin = KeyFile(key_file(tmp_path / "admin", ADMIN))
    basic = "Basic " + __import__("base64").b64encode(b"ann:pw").decode()
    keyed = Access(("ann", "pw"), api, admin)
    assert keyed.role(f"Bearer {PROGRAM}") == Role.CALLER and keyed.role(f"bearer  {ADMIN} ") == Role.ADMIN
    assert keyed.role(basic) == Role.ADMIN and keyed.role(f"Basic {PROGRAM}") == Role.NONE
    assert keyed.role(f"Bearer {PROGRAM}x") == keyed.role("") == keyed.role("Bearer") == Role.NONE
    assert keyed.admin_refusal(f"Bearer {ADMIN}") is None and keyed.admin_refusal(basic) is None
    assert keyed.admin_refusal(f"Bearer {PROGRAM}")[0] == 403 and keyed.admin_refusal("Bearer no")[0] == 401
    assert keyed.challenge() == 'Bearer realm="classifier", Basic realm="classifier"'

    programs_only = Access(api_keys=api)  # no admin at all: a program's key calls, never administers
    assert programs_only.may_call(f"Bearer {PROGRAM}") and not programs_only.may_call("")
    assert programs_only.admin_refusal(f"Bearer {PROGRAM}")[0] == 403 and programs_only.admin_refusal("")[0] == 401
    assert Access(api_keys=api, open_admin=True).admin_refusal(f"Bearer {PROGRAM}") is None
    assert programs_only.challenge() == 'Bearer realm="classifier"'
    assert Access().may_call("") and Access().admin_refusal("")[0] == 403
    assert Access(open_admin=True).admin_refusal("") is None
    assert Access(("ann", "pw")).challenge() == 'Basic realm="classifier"'  # as before keys existed


def test_a_key_file_that_cannot_be_read_stops_start_up_before_the_model_loads(tmp_path):
    import app

    for keys, why in ((tmp_path / "missing", "No such file"), (key_file(tmp_path / "bad", "sha256:12"), "line 1")):
        with pytest.raises(SystemExit) as stopped:
            app.build(["--conf", str(tmp_path / "no-conf.json"), "--grpc-port", "0", "--api-keys", str(keys)])
        assert str(stopped.value).startswith("error: cannot start: key file") and why in str(stopped.value)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A server of two colour models with the login, a program's key and an admin's key."""
    folder = tmp_path_factory.mktemp("keyed")
    for name in ("a", "b"):
        write_colour_graph(folder / "repository" / name / "model")
        write_conf(folder / "repository" / name)
    running = InProcessServer("--model-repository", str(folder / "repository"), "--auth", "ann:pw",
                              "--api-keys", str(key_file(folder / "api-keys", PROGRAM)),
                              "--admin-keys", str(key_file(folder / "admin-keys", ADMIN)),
                              "--flagging-dir", str(folder / "flagged"), "--train-dir", str(folder / "trained"))
    yield running
    running.stop()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_every_rest_route_a_program_calls_takes_a_key(keyed):
    calls = [("POST", "/service", RED, 200), ("POST", "/service/b", RED, 200), ("POST", "/explain", RED, 200),
             ("GET", "/v2/models/a", None, 200), ("GET", "/v1/models/a", None, 200),
             ("POST", "/v1/models/a:predict", b'{"instances": [{"b64": ""}]}', 400)]  # the empty image, past the login
    with httpx.Client(base_url=keyed.url, timeout=60) as client:
        for method, path, body, status in calls:
            right = client.request(method, path, content=body, headers=bearer(PROGRAM))
            assert right.status_code == status, (path, right.text)
            for headers in (bearer("wrong"), {}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {PROGRAM}"}):
                refused = client.request(method, path, content=body, headers=headers)
                assert refused.status_code == 401, (path, headers, refused.text)
                assert refused.headers["www-authenticate"].startswith("Bearer")
                assert refused.json() == {"error": "authentication required"}
        assert client.post("/service", content=RED, headers=bearer(ADMIN)).json()[0][0] == "red"  # admin ⊇ program
        assert client.post("/service", content=RED, auth=("ann", "pw")).status_code == 200  # the login, as before
        assert client.get("/healthz").status_code == client.get("/v2/health/ready").status_code == 200
        assert client.get("/metrics").status_code == 200
    assert PROGRAM not in keyed.output() and ADMIN not in keyed.output()  # never logged


def test_admin_actions_take_an_admin_key_not_a_programs(keyed):
    with httpx.Client(base_url=keyed.url, timeout=120) as client:
        for path in ("/admin/reload", "/v2/repository/models/b/unload", "/v2/repository/models/b/load"):
            assert client.post(path, headers=bearer(PROGRAM)).status_code == 403, path
            assert client.post(path, headers=bearer("wrong")).status_code == 401, path
            answer = client.post(path, headers=bearer(ADMIN))
            assert answer.status_code == 200, (path, answer.text)


def test_grpc_takes_the_same_keys(keyed):
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    from test_grpc import image_input

    client = triton.InferenceServerClient(keyed.grpc_target)
    answer = client.infer("a", [image_input([RED])], headers={"authorization": f"Bearer {PROGRAM}"},
                          outputs=[triton.InferRequestedOutput("labels")])
    assert answer.as_numpy("labels")[0][0].decode() == "red"
    for headers, code in (({"authorization": "Bearer wrong"}, "UNAUTHENTICATED"), ({}, "UNAUTHENTICATED")):
        with pytest.raises(InferenceServerException) as refused:
            client.infer("a", [image_input([RED])], headers=headers)
        assert refused.value.status() == f"StatusCode.{code}"
    with pytest.raises(InferenceServerException) as refused:
        client.unload_model("b", headers={"authorization": f"Bearer {PROGRAM}"})
    assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
    client.unload_model("b", headers={"authorization": f"Bearer {ADMIN}"})
    client.load_model("b", headers={"authorization": f"Bearer {ADMIN}"})
    assert client.is_model_ready("b", headers={"authorization": f"Bearer {PROGRAM}"})


def test_gradios_api_takes_a_key_and_the_page_keeps_its_login(keyed, tmp_path):
    from gradio_client import Client, handle_file

    (tmp_path / "red.png").write_bytes(RED)
    client = Client(keyed.url, headers=bearer(PROGRAM), verbose=False)
    result = client.predict(handle_file(str(tmp_path / "red.png")), "b", api_name="/classify")
    assert result["label"] == "red"
    with pytest.raises(Exception):
        Client(keyed.url, headers=bearer("wrong"), verbose=False)
    with httpx.Client(base_url=keyed.url, timeout=30) as browser:  # the page: its login form, not a key
        assert browser.get("/").status_code == 200
        assert browser.get("/gradio_api/info").status_code == 401
        assert browser.post("/login", data={"username": "ann", "password": "pw"}).status_code == 200
        assert browser.get("/gradio_api/info").status_code == 200


def test_the_mcp_tool_takes_a_key_and_names_a_model(keyed):
    import base64
    import json

    from test_agent_tool import use_the_tool

    red = base64.b64encode(RED).decode()
    _, [answer] = use_the_tool(keyed.url, [{"photo": red, "model_name": "b"}], headers=bearer(PROGRAM))
    assert json.loads(answer.content[0].text)["labels"][0]["label"] == "red"
    _, [unknown] = use_the_tool(keyed.url, [{"photo": red, "model_name": "nope"}], headers=bearer(PROGRAM))
    assert unknown.isError and "nope" in unknown.content[0].text
    with httpx.Client(base_url=keyed.url, timeout=30) as client:  # refused before the MCP server reads a byte
        refused = client.post("/gradio_api/mcp/", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                              headers={**bearer("wrong"), "Accept": "application/json, text/event-stream"})
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
