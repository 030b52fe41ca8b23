"""The publish client comparisons run, small: ``python -m bench.publish_clients`` (every
client publishes every batch to a real Pushpin without a failure) and
``python -m bench.publish_rates``."""

from __future__ import annotations

import subprocess
import sys

from bench.publish_clients import CLIENTS
from bench.publish_rates import CLIENTS as RATE_CLIENTS
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


def test_publish_rates_smoke() -> None:
    """``python -m bench.publish_rates``, small: every client publishes at the offered rate,
    over plain http to a real Pushpin and over TLS through a real nginx."""
    small = ["--rates", "200", "--seconds", "0.5", "--rounds", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "bench.publish_rates", *small],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    plain, tls = result.stdout.split("https, kept alive")
    for name in RATE_CLIENTS:
        assert name in plain, result.stdout
        assert (name in tls) == (name != RATE_CLIENTS[0]), result.stdout  # no TLS by hand
    assert "items/s offered" in tls
