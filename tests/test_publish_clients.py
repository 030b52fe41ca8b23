"""The publish clients comparison (``python -m bench.publish_clients``) runs, small: every
client publishes every batch to a real Pushpin without a failure."""

from __future__ import annotations

import subprocess
import sys

from bench.publish_clients import CLIENTS
from tests.support import ROOT


def test_publish_clients_smoke() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.publish_clients", "--runs", "3", "--batch", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "1 item per batch" in result.stdout and "4 items per batch" in result.stdout
    for name in CLIENTS:
        assert result.stdout.count(name) == 2, result.stdout
    assert "failed" not in result.stdout, result.stdout
