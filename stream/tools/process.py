"""A worker in a subprocess: what the demo, the end-to-end backtest and integration tests run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from stream.errors import InfraError


class WorkerProcess:
    """``python -m stream worker`` in a subprocess with its own settings; its log kept in a file."""

    def __init__(self, bootstrap: str, env: Mapping[str, str], log_path: Path, instance: str = "0") -> None:
        self.env = {
            **os.environ,
            **env,
            "STREAM_KAFKA_BOOTSTRAP": bootstrap,
            "STREAM_WORKER_INSTANCE": instance,
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    def wait_for_log(self, text: str, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise InfraError(f"worker exited with {self.proc.returncode}; see {self.log_path}")
            if self.log_path.exists() and text in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise InfraError(f"worker did not log {text!r} within {timeout_s:.0f}s; see {self.log_path}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)

    def stop(self) -> None:
        """SIGTERM: faust shuts down cleanly (flushes the sink, commits offsets)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
