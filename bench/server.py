"""A server process on a free loopback port, started and stopped by the benchmark and the tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """`python <script> --host 127.0.0.1 --port <free> <args>`, waited on until `ready_path` answers 200."""

    def __init__(self, *args: str, script: Path = ROOT / "app.py", env: dict | None = None,
                 ready_path: str = "/readyz", timeout: float = 180):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, str(script), "--host", "127.0.0.1", "--port", str(self.port), *args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{script.name} exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + ready_path, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{script.name} was not ready in {timeout:.0f} s:\n{self.output()}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> tuple[float, float]:
        """(current, peak) resident memory of the server process, in MB, from /proc."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines())
        return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        Path(self.log.name).unlink(missing_ok=True)
