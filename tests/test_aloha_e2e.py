"""The aloha client against the real server, through a real Pushpin; and the README's example,
run as written."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import aloha
from tests.conftest import unique
from tests.support import ROOT, Stack
from tests.test_posts_feed import follow


def client_for(stack: Stack, user: str, **kwargs: Any) -> aloha.Client:
    with stack.account(user) as c:
        key = c.get("/api/account").json()["api_key"]
    return aloha.Client(email=user, api_key=key, site=stack.url, **kwargs)


def test_the_client_end_to_end(stack: Stack) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    client, sender = client_for(stack, reader), client_for(stack, writer)
    with stack.client(reader) as r:
        follow(r, f"{writer}/posts")
    queue = client.register(event_types=["message"])
    sent = sender.send_message({"type": "stream", "to": writer, "topic": "posts", "content": "hi"})
    events = client.get_events(queue["queue_id"], queue["last_event_id"])["events"]
    assert [e["message"]["id"] for e in events] == [sent["id"]]
    assert client.deregister(queue["queue_id"])["result"] == "success"


def test_call_on_each_message_re_registers_when_its_queue_is_lost_and_stops(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aloha")  # the client logs the queues it registers
    reader, writer = unique("juliet"), unique("romeo")
    client = client_for(stack, reader, backoff_base=0.05, backoff_max=0.5)
    sender = client_for(stack, writer)
    with stack.client(reader) as r:
        follow(r, f"{writer}/posts")
    received: list[str] = []
    loop = threading.Thread(
        target=client.call_on_each_message, args=(lambda m: received.append(m["content"]),)
    )
    loop.start()
    try:
        send = {"type": "stream", "to": writer, "topic": "posts"}
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            sender.send_message({**send, "content": "first"})
            time.sleep(0.5)
        assert received and received[0] == "first"
        # Lose its queue behind its back: it must register a new one and go on.
        (queue,) = _registered(caplog)
        with stack.client(reader) as r:
            before = len(received)
            assert r.delete("/api/v1/events", params={"queue_id": queue}).status_code == 200
        deadline = time.monotonic() + 10
        while len(received) == before and time.monotonic() < deadline:
            sender.send_message({**send, "content": "after the loss"})
            time.sleep(0.5)
        assert "after the loss" in received[before:]
        assert _registered(caplog)[0] == queue and len(_registered(caplog)) == 2
    finally:
        start = time.monotonic()
        client.stop()
        loop.join(5)
    assert not loop.is_alive() and time.monotonic() - start < 2


def _registered(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The queues the client said it registered, in order."""
    said = [record.getMessage() for record in caplog.records if record.name == "aloha"]
    prefix = "registered event queue "
    return [line.removeprefix(prefix) for line in said if line.startswith(prefix)]


SEED_EXAMPLE = textwrap.dedent(
    """\
    #!/usr/bin/env python

    import sys
    import aloha

    # Pass the path to your aloharc file here.
    client = aloha.Client(config_file="~/aloharc")

    # Print every message the current user would receive
    # This is a blocking call that will run forever
    client.call_on_each_message(lambda msg: sys.stdout.write(str(msg) + "\\n"))
    """
)


def test_the_seeds_example_works_as_written(stack: Stack, tmp_path: Path) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    sender = client_for(stack, writer)
    with stack.account(reader) as r:
        follow(r, f"{writer}/posts")
        key = r.get("/api/account").json()["api_key"]
    (tmp_path / "aloharc").write_text(f"[api]\nemail={reader}\nkey={key}\nsite={stack.url}\n")
    script = tmp_path / "example.py"
    script.write_text(SEED_EXAMPLE)
    env = {"HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    example = subprocess.Popen(
        [sys.executable, "-u", str(script)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        out = example.stdout
        assert out is not None
        lines: list[str] = []
        reader_thread = threading.Thread(target=lambda: lines.append(out.readline()))
        reader_thread.start()
        for _ in range(20):
            sender.send_message(
                {"type": "stream", "to": writer, "topic": "posts", "content": "from the example"}
            )
            reader_thread.join(0.5)
            if lines:
                break
        assert lines and "from the example" in lines[0] and "'sender_email'" in lines[0]
    finally:
        example.kill()
        example.wait()
        if example.stdout:
            example.stdout.close()
