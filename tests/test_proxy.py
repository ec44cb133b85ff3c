"""Behind Debian's nginx under a sub-path (--root-path): the page in Chromium, curl and gradio_client, through
the nginx block README gives; and the gRPC port through docs/deploy.md's block, with tritonclient.grpc."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import httpx
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.server import free_port
from conftest import CAT_LABELS, PHOTOS, ROOT, require_debian_package
from test_browser import CHROMIUM, DROP_ZONE, FLAGS, TOP_LABEL
from test_grpc import LIMIT, size_refusals, streamed, top_label
from in_process import InProcessServer

NGINX = Path("/usr/sbin/nginx")
PREFIX = "/classifier"


def documented_block(port: int) -> tuple[str, str]:
    """README's nginx block, pointed at `port`: (its http-level lines, its location block)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```nginx\n(.*?)```", text, re.S).group(1).replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    head, _, location = block.partition("\n\n")
    return head, location


def documented_grpc_block(grpc_port: int, listen: int) -> str:
    """docs/deploy.md's gRPC server block, pointed at `grpc_port` and listening on loopback's `listen`."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    [block] = [b for b in re.findall(r"```nginx\n(.*?)```", text, re.S) if "grpc_pass" in b]
    return (block.replace("127.0.0.1:8500", f"127.0.0.1:{grpc_port}")
            .replace("listen 8501 ", f"listen 127.0.0.1:{listen} "))


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    require_debian_package(NGINX, "nginx")
    folder = tmp_path_factory.mktemp("nginx")
    app = InProcessServer("--root-path", PREFIX, "--no-train")
    nginx = None
    try:  # from here on, whatever fails, the server is stopped
        port, grpc_port = free_port(), free_port()
        head, location = documented_block(app.port)
        temp = "\n".join(f"  {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                               "uwsgi", "scgi"))
        (folder / "nginx.conf").write_text(f"""{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"};
events {{}}
http {{
  access_log off;
{temp}
  {head}
  server {{
    listen 127.0.0.1:{port};
    {location}
  }}
{documented_grpc_block(app.grpc_port, grpc_port)}
}}
""")
        nginx = subprocess.Popen([str(NGINX), "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g",
                                  "daemon off;"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}{PREFIX}"
        for _ in range(100):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"nginx did not answer: {(folder / 'error.log').read_text(errors='replace')}")
        yield url, f"127.0.0.1:{grpc_port}"
    finally:
        if nginx:
            nginx.terminate()
            nginx.wait(10)
        app.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_curl_and_the_protocols_work_through_the_proxy(proxied):
    url, _ = proxied
    answer = subprocess.run(["curl", "-s", "-T", str(PHOTOS / "cat.jpeg"), f"{url}/service"], capture_output=True,
                            text=True, timeout=60)
    assert re.search(r'\[\["([^"]+)"', answer.stdout).group(1) in CAT_LABELS
    assert httpx.get(f"{url}/v2/health/ready", timeout=10).json() == {"ready": True}
    assert "classifier_requests_total" in httpx.get(f"{url}/metrics", timeout=10).text
    config = httpx.get(f"{url}/config", timeout=10).json()
    assert config["root"] == url  # the page builds every URL from this: prefix and port kept


def test_gradio_client_works_through_the_proxy(proxied):
    from gradio_client import Client, handle_file

    url, _ = proxied
    client = Client(url + "/", verbose=False)
    try:
        assert client.predict(handle_file(str(PHOTOS / "cat.jpeg")), api_name="/classify")["label"] in CAT_LABELS
    finally:
        client.close()


def test_the_page_works_in_chromium_through_the_proxy(proxied):
    require_debian_package(CHROMIUM, "chromium")
    from playwright.sync_api import sync_playwright

    url, _ = proxied
    failed: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(url + "/")
            page.wait_for_selector(DROP_ZONE, timeout=60_000)
            with page.expect_file_chooser() as chooser:
                page.click(DROP_ZONE)
            chooser.value.set_files(str(PHOTOS / "cat.jpeg"))
            page.wait_for_selector(TOP_LABEL, timeout=60_000)
            assert page.inner_text(TOP_LABEL).strip() in CAT_LABELS
        finally:
            browser.close()
    assert not failed, failed  # no asset, upload or API call went to a wrong URL


def test_grpc_works_through_the_proxy(proxied):
    _, target = proxied
    cat = (PHOTOS / "cat.jpeg").read_bytes()
    assert top_label(target, cat) in CAT_LABELS
    client = triton.InferenceServerClient(target)
    answers = streamed(client, [cat, cat])
    assert [(error, result.as_numpy("labels")[0][0].decode() in CAT_LABELS) for result, error in answers] \
        == [(None, True)] * 2
    large, huge = size_refusals(client)  # each refused by the server, its status and message passed on by nginx
    assert large.status() == "StatusCode.RESOURCE_EXHAUSTED" and f"limit of {LIMIT} bytes" in large.message()
    assert huge.status() == "StatusCode.RESOURCE_EXHAUSTED" and "larger than max" in huge.message(), huge
    with grpc.insecure_channel(target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
