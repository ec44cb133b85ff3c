"""The Docker image built and run for real: from a wheelhouse on a Debian-made base (no registry is reachable),
--read-only, healthy by its own HEALTHCHECK, with no TensorFlow in it and serving without converting; timed again
on fewer cores; a mounted model refused clearly, converted with the full target, then served.

The base image and the wheelhouse are kept between runs in $CLASSIFIER_TEST_CACHE (./test.sh names it); Docker's
own layer cache keeps the rest. A clean machine makes them once, in a thread that starts with the session."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from bench.server import free_port, wait_until_ready
from conftest import BUILD_REPORT, CAT_LABELS, PHOTOS, ROOT, encode, solid, write_colour_graph, write_conf
from test_app import curl
from test_grpc import top_label

CACHE = Path(os.environ.get("CLASSIFIER_TEST_CACHE", Path.home() / ".cache" / "classifier-tests"))
BASE = "classifier-test-base:bookworm"  # Debian 12's Python 3.11: what python:3.11-slim is built on
IMAGE = "classifier-test"
# What the base holds: Python and venv, as python:3.11-slim does; CA certificates for a registry build.
DEBIAN_BASE = ["mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm"]
LEGACY_BUILDER = {"DOCKER_BUILDKIT": "0"}  # what Debian's docker.io has without buildx; BuildKit builds it alike


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    run = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **LEGACY_BUILDER})
    if check and run.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({run.returncode}):\n{run.stdout[-3000:]}"
                             f"\n{run.stderr[-3000:]}")
    return run


def prerequisites() -> str | None:
    """Why the image cannot be built here (the test then skips, or fails under ./test.sh as root), or None."""
    for path, package in ((Path("/usr/sbin/dockerd"), "docker.io"), (Path("/usr/bin/mmdebstrap"), "mmdebstrap")):
        if not path.exists():
            return f"Debian's {package} is not installed ({path} is missing): apt-get install -y {package}"
    if shutil.which("docker") is None:
        return "docker.io is installed but no docker client is on PATH"
    if os.geteuid() != 0 and subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return "no Docker engine runs, and only root can start one here"
    return None


def start_engine() -> subprocess.Popen | None:
    """The Docker engine running, else dockerd started here on loopback only (no bridge, no iptables): its
    process, to stop at the end, or None if it was running already."""
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0:
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    started = subprocess.Popen(["dockerd", "--bridge=none", "--iptables=false"],
                               stdout=open(CACHE / "dockerd.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        assert started.poll() is None and time.monotonic() < deadline, (CACHE / "dockerd.log").read_text()[-2000:]
        time.sleep(0.5)
    return started


def base_image() -> str:
    """Debian bookworm with Python, imported from an mmdebstrap tarball (made once, kept in CACHE)."""
    if docker("image", "inspect", BASE, check=False).returncode == 0:
        return BASE
    tarball = CACHE / "bookworm-python.tar"
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".part.tar")  # mmdebstrap makes a tarball of a name ending in .tar
        subprocess.run([*DEBIAN_BASE, str(partial)], check=True, capture_output=True, timeout=600)
        os.replace(partial, tarball)
    docker("import", str(tarball), BASE, timeout=300)
    return BASE


def wheelhouse() -> Path:
    """Every wheel requirements.txt needs, from `pip download` (pip's own cache makes a second one cheap); made
    again, from nothing, when the requirements change."""
    requirements = [ROOT / "requirements.txt", ROOT / "requirements-serve.txt"]
    stamp = hashlib.sha256(b"".join(p.read_bytes() for p in requirements)).hexdigest()[:16]
    folder = CACHE / "wheels"
    if not (folder / f".made-for-{stamp}").exists():
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--only-binary=:all:", "-r", str(ROOT / "requirements.txt"), "-d", str(folder)],
                       check=True, capture_output=True, timeout=900)
        (folder / f".made-for-{stamp}").touch()
    return folder


def build_context(folder: Path, wheels: Path) -> Path:
    """What `git clone` gives (the working tree's tracked and new files), with the wheelhouse in it as wheels/."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    (folder / "wheels").mkdir()
    for wheel in wheels.glob("*.whl"):
        try:
            os.link(wheel, folder / "wheels" / wheel.name)  # no copy of 1.5 GB when on the same file system
        except OSError:
            shutil.copy2(wheel, folder / "wheels" / wheel.name)
    return folder


def build() -> dict:
    """The images built from the Dockerfile as it is, in the documented wheelhouse mode, each stage tagged (so
    that pruning the superseded ones keeps the layer cache): the runtime image and the full target."""
    context = build_context(Path(tempfile.mkdtemp(prefix="docker-context-")), wheelhouse())
    try:
        started = time.perf_counter()
        arguments = ["build", "--network", "host", "--build-arg", f"BASE_IMAGE={base_image()}", "--build-arg",
                     "WHEELS=wheels"]
        for target, tag in (("all-packages", "packages"), ("full", "full"), ("runtime", "latest")):
            docker(*arguments, "--target", target, "-t", f"{IMAGE}:{tag}", str(context), timeout=1800)
        built_s = time.perf_counter() - started
        docker("image", "prune", "--force", check=False)  # earlier builds' superseded images: disk stays bounded
    finally:
        shutil.rmtree(context, ignore_errors=True)
    size = int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout)
    full = int(docker("image", "inspect", "-f", "{{.Size}}", f"{IMAGE}:full").stdout)
    return {"size": size, "full": full, "built_s": built_s}


class Building:
    """The engine started and the images built in a thread from the start of the session (conftest starts it
    when a Docker test is collected), so that their minutes of pip and disk overlap the other tests. Under
    pytest-xdist the build runs in the controller, the tests in a worker: the controller writes what came of it to
    the file $CLASSIFIER_DOCKER_BUILD names, which the worker waits for."""

    def __init__(self) -> None:
        self.engine: subprocess.Popen | None = None
        self.result: dict | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="docker-build", daemon=True)
        self.started = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.thread.start()

    def _run(self) -> None:
        try:
            self.engine = start_engine()
            self.result = build()
        except BaseException as exc:  # raised again in the test that waits for it
            self.error = exc
        if report := os.environ.get(BUILD_REPORT):
            failure = "".join(traceback.format_exception(self.error)) if self.error else None
            Path(report + ".part").write_text(json.dumps({"result": self.result, "error": failure}))
            os.replace(report + ".part", report)

    def wait(self) -> dict:
        if (report := os.environ.get(BUILD_REPORT)) and os.environ.get("PYTEST_XDIST_WORKER"):
            return self._wait_for_the_controller(Path(report))
        self.start()  # if conftest has not (a run of this module alone)
        self.thread.join()
        if self.error:
            raise self.error
        return self.result

    @staticmethod
    def _wait_for_the_controller(report: Path, timeout: float = 1800) -> dict:
        deadline = time.monotonic() + timeout
        while not report.exists():
            assert time.monotonic() < deadline, f"the controller's Docker build wrote nothing in {timeout:.0f} s"
            time.sleep(1)
        outcome = json.loads(report.read_text())
        if outcome["error"]:
            raise AssertionError(f"building the image failed (in pytest-xdist's controller):\n{outcome['error']}")
        return outcome["result"]

    def stop(self) -> None:
        if self.thread.is_alive():
            self.thread.join()
        if self.engine:
            self.engine.terminate()
            self.engine.wait(30)


BUILDING = Building()


def start_building() -> None:
    """From conftest, once the session's tests are collected: the build begins beside them."""
    if prerequisites() is None:
        BUILDING.start()


@pytest.fixture(scope="module")
def image() -> dict:
    if reason := prerequisites():
        if os.environ.get("CLASSIFIER_SYSTEM_PACKAGES") == "required":
            pytest.fail(reason)
        pytest.skip(reason)
    built = BUILDING.wait()
    print(f"\nimage {IMAGE}: {built['size'] / 1e9:.2f} GB (full target {built['full'] / 1e9:.2f} GB); built in "
          f"{built['built_s']:.0f} s")
    return built


class Container:
    """`docker run -d` of the image on a free loopback port (host network), removed on exit."""

    def __init__(self, *args: str, image: str = IMAGE, command: tuple[str, ...] = ()):
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.perf_counter()
        self.id = docker("run", "-d", "--network", "host", "-e", "CLASSIFIER_HOST=127.0.0.1", "-e",
                         f"CLASSIFIER_PORT={self.port}", "-e", f"CLASSIFIER_GRPC_PORT={self.grpc_port}", *args, image,
                         *command).stdout.strip()

    def wait_until_ready(self, timeout: float = 120) -> float:
        """Seconds from `docker run` to the first 200 from /readyz."""
        try:
            wait_until_ready(self.url + "/readyz", self, timeout)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}:\n{self.logs()[-4000:]}") from None
        return time.perf_counter() - self.started

    def poll(self) -> int | None:
        """As Popen.poll: None while the container runs, else its exit code (wait_until_ready asks)."""
        state = json.loads(docker("inspect", "-f", "{{json .State}}", self.id).stdout)
        self.returncode = None if state["Running"] else state["ExitCode"]
        return self.returncode

    def health(self) -> str:
        return docker("inspect", "-f", "{{.State.Health.Status}}", self.id).stdout.strip()

    def logs(self) -> str:
        run = docker("logs", self.id, check=False)
        return run.stdout + run.stderr

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        docker("rm", "--force", self.id, check=False)


def test_the_runtime_image_is_small_read_only_healthy_and_serves_without_tensorflow(image, tmp_path):
    volume = f"classifier-test-flagged-{os.getpid()}"
    try:
        with Container("--read-only", "--tmpfs", "/tmp", "-v", f"{volume}:/app/flagged") as container:
            ready_s = container.wait_until_ready()
            deadline = time.monotonic() + 60  # the image's own HEALTHCHECK: every 10 s
            while container.health() != "healthy":
                assert container.health() in ("starting", "healthy") and time.monotonic() < deadline, \
                    container.health()
                time.sleep(1)
            status, result, _ = curl("-T", str(PHOTOS / "cat.jpeg"), f"{container.url}/service")
            assert status == 200 and result[0][0] in CAT_LABELS, result
            client = Client(container.url + "/", verbose=False)
            try:
                answer = client.predict(handle_file(str(PHOTOS / "cat.jpeg")), api_name="/classify")
                assert answer["label"] in CAT_LABELS
            finally:
                client.close()
            # The gRPC port too (CLASSIFIER_GRPC_PORT), through tritonclient.grpc.
            assert top_label(f"127.0.0.1:{container.grpc_port}", (PHOTOS / "cat.jpeg").read_bytes()) in CAT_LABELS
            for package in ("tensorflow", "keras"):
                run = docker("exec", container.id, "python", "-c", f"import {package}", check=False)
                assert run.returncode != 0 and f"No module named '{package}'" in run.stderr, run.stderr
            rss = int(next(line.split()[1] for line in docker("exec", container.id, "cat", "/proc/1/status").stdout
                           .splitlines() if line.startswith("VmRSS:"))) * 1024
            logs = container.logs()
            assert "without TensorFlow" in logs, logs[-3000:]
            assert "conversion" not in logs and "timing the engines again" not in logs, logs[-3000:]
            assert "Train tab: off, because TensorFlow" in logs
            print(f"\nready {ready_s:.1f} s after docker run; RSS {rss / 2 ** 20:.0f} MiB; image "
                  f"{image['size'] / 1e9:.2f} GB")
            assert image["size"] <= 1.0e9, f"the runtime image is {image['size'] / 1e9:.2f} GB"
    finally:
        docker("volume", "rm", "--force", volume, check=False)


def test_on_fewer_cores_the_engines_are_timed_again_without_tensorflow(image):
    """Another CPU than the build's (here: one core of it, which cpu() tells apart): timed again at start from the
    converted files, each checked against the recorded reference answers."""
    with Container("--read-only", "--tmpfs", "/tmp", "--cpuset-cpus", "0") as container:
        container.wait_until_ready()
        logs = container.logs()
        assert "timing the engines again on" in logs and "(1 cores" in logs, logs[-3000:]
        assert "without TensorFlow" in logs
        status, result, _ = curl("-T", str(PHOTOS / "cat.jpeg"), f"{container.url}/service")
        assert status == 200 and result[0][0] in CAT_LABELS


def test_a_mounted_model_is_refused_clearly_then_converted_by_the_full_target_and_served(image, tmp_path):
    write_colour_graph(tmp_path / "model", size=8)
    write_conf(tmp_path, model_dir="model", size=8, runtime="auto")
    os.chmod(tmp_path, 0o777)  # the image's user (uid 10001) writes the conversion beside the model
    os.chmod(tmp_path / "model", 0o777)
    mount = ["-v", f"{tmp_path}:/models/colour", "-e", "UAI_SERVICE_CONFIG=/models/colour/conf.json"]

    with Container(*mount) as refused:
        deadline = time.monotonic() + 60
        while refused.poll() is None:
            assert time.monotonic() < deadline, refused.logs()[-3000:]
            time.sleep(0.5)
        logs = refused.logs()
        assert "error: cannot start:" in logs and "python -m classifier --convert" in logs, logs[-3000:]
        assert "Traceback" not in logs

    convert = docker("run", "--rm", "--network", "host", *mount, f"{IMAGE}:full", "python", "-m", "classifier",
                     "--convert", timeout=300)
    assert "serving with" in convert.stdout, convert.stdout + convert.stderr

    red = tmp_path / "red.png"
    red.write_bytes(encode(solid("red")))
    with Container("--read-only", "--tmpfs", "/tmp", "-v", f"{tmp_path}:/models/colour:ro", "-e",
                   "UAI_SERVICE_CONFIG=/models/colour/conf.json") as served:
        served.wait_until_ready()
        status, result, _ = curl("-T", str(red), f"{served.url}/service")
        assert status == 200 and result[0][0] == "red"
        assert "without TensorFlow" in served.logs()


def test_a_mounted_repository_is_converted_whole_by_the_full_target_and_served_read_only(image, tmp_path):
    """Two models (one with its conf.json, one a bare model folder), converted in one run of the full target's
    `python -m classifier --convert --model-repository`, then served by name from a read-only mount."""
    repository = tmp_path / "models"
    write_colour_graph(repository / "with-conf" / "model", size=8)
    write_conf(repository / "with-conf", model_dir="model", size=8, runtime="auto")
    write_colour_graph(repository / "bare", size=8)  # its labels beside it; size and convention inferred
    for folder in (repository, *repository.rglob("*")):
        if folder.is_dir():
            os.chmod(folder, 0o777)  # the image's user (uid 10001) writes each conversion beside its model
    mount = f"{repository}:/models"

    convert = docker("run", "--rm", "--network", "host", "-v", mount, f"{IMAGE}:full", "python", "-m", "classifier",
                     "--convert", "--model-repository", "/models", timeout=300)
    assert "bare: serving with" in convert.stdout and "with-conf: serving with" in convert.stdout, \
        convert.stdout + convert.stderr

    red = tmp_path / "red.png"
    red.write_bytes(encode(solid("red")))
    with Container("--read-only", "--tmpfs", "/tmp", "-v", f"{mount}:ro",
                   command=("python", "app.py", "--model-repository", "/models")) as served:
        served.wait_until_ready()
        for name in ("bare", "with-conf"):
            status, result, _ = curl("-T", str(red), f"{served.url}/service/{name}")
            assert status == 200 and result[0][0] == "red", (name, result)
        status, index, _ = curl("-X", "POST", f"{served.url}/v2/repository/index")
        assert status == 200 and {row["name"]: row["state"] for row in index} == {"bare": "READY", "with-conf": "READY"}
        assert "without TensorFlow" in served.logs()
