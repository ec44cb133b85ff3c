"""A server process on a free loopback port, started and stopped by the benchmark and the tests."""
from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JPEGS = sorted((ROOT / "examples").glob("*.jp*g"))  # real photos, 35–112 KB, 451×300 to 741×497
THREAD_ROLES = {"decode": "decode", "model": "model", "litert": "model"}  # our pools' thread name prefixes


def cpu_of(task: Path) -> float:
    """CPU seconds (user + system) of a process or thread so far, from its /proc folder's stat; 0 once it ended."""
    try:
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15 of proc(5)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def conf_variant(folder: Path, tensorflow: dict | None = None, **sections: dict) -> Path:
    """The project's conf.json with its model_dir made absolute, `tensorflow` keys changed and other
    http_server sections (batching, limits, …) set, written as folder/conf.json."""
    conf = json.loads((ROOT / "conf.json").read_text())
    conf["http_server"]["tensorflow"].update({"model_dir": str(ROOT / "checkpoint_dir"), **(tensorflow or {})})
    conf["http_server"].update(sections)
    path = Path(folder) / "conf.json"
    path.write_text(json.dumps(conf))
    return path


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Returns once url answers 200; raises RuntimeError if the process exits or the timeout passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"not ready in {timeout:.0f} s")


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(RuntimeError):
    """A server's start failed because a port chosen for it was taken meanwhile."""


class ServerProcess:
    """`python <script> --host 127.0.0.1 --port <free> <args>`, waited on until `ready_path` answers 200."""

    def __init__(self, *args: str, script: Path = ROOT / "app.py", env: dict | None = None,
                 ready_path: str = "/readyz", timeout: float = 180, python: str | Path = sys.executable):
        # A free port may be taken by another process between free_port() and the server's bind (the tests run
        # servers on two workers at once): a start that failed on a port this chose is tried again on new ones.
        for attempt in range(1, 4):
            try:
                return self._start(args, script, env, ready_path, timeout, python)
            except PortTaken:
                if attempt == 3:
                    raise

    def _start(self, args: tuple[str, ...], script: Path, env: dict | None, ready_path: str, timeout: float,
               python: str | Path) -> None:
        started = time.perf_counter()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # app.py's gRPC port too, on a free port of its own (its default, 8500, would be one server's only).
        self.grpc_port = None
        if script.name == "app.py" and "--grpc-port" not in args:
            self.grpc_port = free_port()
            args = (*args, "--grpc-port", str(self.grpc_port))
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [str(python), str(script), "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
        try:
            wait_until_ready(self.url + ready_path, self.process, timeout)
            self.ready_s = time.perf_counter() - started  # from the start of the process to its first 200
            self.ready_rss_mb, self.ready_pss_mb = self.rss_mb()[0], self.pss_mb()
        except RuntimeError as exc:
            output = self.output()  # before stop() deletes the log
            self.stop()
            ours = [port for port in (self.port, self.grpc_port) if port]
            taken = any("in use" in line and any(str(port) in line for port in ours) for line in output.splitlines())
            raise (PortTaken if taken else RuntimeError)(f"{script.name}: {exc}:\n{output}") from None

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident memory of the server process, in MB, from /proc."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines())
        return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))

    def processes(self) -> list[int]:
        """The server's pid and those of every process it started (LitServe's workers), from /proc."""
        found, pending = [], [self.pid]
        while pending:
            pid = pending.pop()
            found.append(pid)
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pending += [int(child) for child in (task / "children").read_text().split()]
            except OSError:  # the process ended meanwhile
                continue
        return found

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server and every process it started have used so far, from /proc."""
        return sum(cpu_of(Path(f"/proc/{pid}")) for pid in self.processes())

    def cpu_seconds_by_thread(self) -> dict[str, float]:
        """The server process's CPU time so far by what its threads do, told apart by their names in the OS
        (classifier/os_threads.py): "event loop" (the main thread: HTTP, routing, batching, JSON), "decode",
        "model" (the model calls, and LiteRT's lanes), "other" (the engine's own thread pools, gRPC's, asyncio's
        to_thread pool …). Living threads only; {} for a server whose threads carry no such names (the peers)."""
        roles: dict[str, float] = {}
        try:
            tasks = list(Path(f"/proc/{self.pid}/task").iterdir())
        except OSError:
            return {}
        for task in tasks:
            try:
                name = (task / "comm").read_text().strip()
            except OSError:  # the thread ended meanwhile
                continue
            pool = re.fullmatch(r"(\w+?)_\d+", name)  # a pool's thread: <prefix>_<number>
            role = "event loop" if task.name == str(self.pid) else THREAD_ROLES.get(pool and pool[1], "other")
            roles[role] = roles.get(role, 0) + cpu_of(task)
        return roles if {"decode", "model"} & set(roles) else {}

    def batches(self) -> tuple[float, float] | None:
        """Images and model calls so far, from the classifier_batch_size histogram on the server's /metrics (summed
        over its models); None for a server without it (the peers)."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
                text = response.read().decode()
        except OSError:
            return None
        samples = [sample for family in text_string_to_metric_families(text) if family.name == "classifier_batch_size"
                   for sample in family.samples]
        if not samples:
            return None
        return tuple(sum(sample.value for sample in samples if sample.name == f"classifier_batch_size_{part}")
                     for part in ("sum", "count"))

    def pss_mb(self) -> float:
        """Proportional set size of the server and every process it started, in MB: shared pages counted once
        across them, so a multi-process server (LitServe's workers) is not counted twice for its libraries."""
        total = 0
        for pid in self.processes():
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            total += next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
        return total / 1024

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        # The processes it started (LitServe's workers) are found in /proc now: once their parent is gone they
        # are no longer its children, and LitServe's orphaned workers spin on a core each.
        children = self.processes()[1:] if self.process.poll() is None else []
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for pid in children:  # what outlived it (LitServe's worker processes)
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        Path(self.log.name).unlink(missing_ok=True)
