"""Login and account creation limits: their defaults, and the parts they are made of."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from app.config import Settings
from app.throttle import AtOnce, Throttle


def test_the_limits_default_to_what_the_readme_says(tmp_path: Path) -> None:
    limits = Settings.from_env({"DATA_DIR": str(tmp_path)}).limits
    assert limits.accounts_per_hour == 20
    assert limits.login_failures_per_account == 10
    assert limits.login_failures_per_address == 30
    assert limits.unknown_logins_per_address == 30
    assert limits.hashes_at_once_per_address == 4


def test_throttle_counts_in_a_sliding_window_and_takes_slots() -> None:
    throttle = Throttle(limit=3, window=60)
    for t in (0, 1, 2):
        assert throttle.retry_after("k", now=t) == 0
        throttle.failed("k", now=t)
    assert throttle.retry_after("k", now=3) == pytest.approx(57)
    assert throttle.retry_after("other", now=3) == 0
    assert throttle.retry_after("k", now=60.5) == 0  # the first failure left the window
    throttle.succeeded("k")
    assert throttle.retry_after("k", now=3) == 0

    assert [throttle.take("slots", now=t) for t in (0, 1, 2)] == [0, 0, 0]
    assert throttle.take("slots", now=3) == pytest.approx(57)  # refused, and not counted
    throttle.give_back("slots")
    assert throttle.take("slots", now=4) == 0
    assert throttle.take("slots", now=60.5) == 0  # the one taken at 0 left the window


def test_at_once_lets_a_few_run_and_the_others_wait_their_turn() -> None:
    async def scenario() -> None:
        gate, running, finished = AtOnce(limit=2), Counter[str](), []

        async def job(key: str, n: int) -> None:
            async with gate.slot(key):
                running[key] += 1
                assert running[key] <= 2
                await asyncio.sleep(0.01)
                running[key] -= 1
            finished.append(n)

        await asyncio.gather(*(job("a", n) for n in range(6)), job("b", 6), job("b", 7))
        assert sorted(finished) == list(range(8)) and gate.most == 2

    asyncio.run(scenario())
