"""Real server processes for tests: started in their own process group, logged to a file, always stopped.

Every test that needs a server (Spark master/worker, PostgreSQL, dagster-webserver, the daemon,
MLflow, an S3 endpoint) goes through `managed_process`, so a failing test never leaves one behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.5,
               log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    tail = ""
    if log is not None and log.exists():
        tail = "\n--- last lines of " + str(log) + " ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= response.status < 500
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


class ManagedProcess:
    def __init__(self, popen: subprocess.Popen, log: Path, name: str, stop_signal: int = signal.SIGTERM):
        self.popen = popen
        self.log = log
        self.name = name
        self.stop_signal = stop_signal

    def assert_running(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; see {self.log}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def wait_ready(self, predicate: Callable[[], bool], timeout: float) -> None:
        def ready() -> bool:
            self.assert_running()
            return predicate()

        wait_until(ready, timeout, f"{self.name} to be ready", log=self.log)

    def stop(self, grace: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, self.stop_signal)
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=grace)
        except ProcessLookupError:
            pass


@contextmanager
def managed_process(
    args: Sequence[str], log: Path, name: str | None = None, env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None, user: str | None = None, stop_signal: int = signal.SIGTERM,
) -> Iterator[ManagedProcess]:
    """Start `args` in a new process group with stdout+stderr in `log`; kill the whole group on exit.

    `user` runs the process as another user (needs root), e.g. servers that refuse to run as root;
    `stop_signal` is sent to the group first (SIGKILL follows after the grace period).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("ab")
    popen = subprocess.Popen(
        list(args), stdout=handle, stderr=subprocess.STDOUT, env=dict(env) if env is not None else None,
        cwd=cwd, start_new_session=True, user=user,
    )
    process = ManagedProcess(popen, log, name or Path(args[0]).name, stop_signal=stop_signal)
    try:
        yield process
    finally:
        process.stop()
        handle.close()
