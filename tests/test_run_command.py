"""The run command as a user runs it: start, Ctrl-C, restart on the same data, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx

from app.pushpin import sockets_dir
from tests.conftest import unique
from tests.support import TLS, Stack, health, kill
from tests.test_posts_feed import follow, last, post
from tests.test_publisher import recorder, wait_for


def pushpin_pids(data_dir: Path) -> list[int]:
    pids = []
    for pid_file in sockets_dir(data_dir / "pushpin").glob("*.pid"):
        text = pid_file.read_text().strip()
        if text.isdigit():
            pids.append(int(text))
    return pids


def processes_of(data_dir: Path) -> list[int]:
    """Live processes whose command line names this data folder or its Pushpin sockets: what
    pid files cannot show once they are gone."""
    marks = (str(data_dir).encode(), str(sockets_dir(data_dir / "pushpin")).encode())
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if any(mark in cmdline for mark in marks) and alive(int(proc.name)):
                found.append(int(proc.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else ""
    return "State:\tZ" not in status


def test_ctrl_c_drains_the_outbox_and_stops_pushpin_with_its_children(tmp_path: Path) -> None:
    with recorder(failures=5) as target:  # its first publishes fail: the outbox is not empty
        stack = Stack(tmp_path)
        stack.env["GRIP_URL"] = f"{target.url},http://127.0.0.1:{stack.env['PUSHPIN_PUBLISH_PORT']}"
        stack.start()
        assert "Ready: clients connect to http://127.0.0.1:" in stack.log()
        user = unique("juliet")
        with stack.account(user) as c:
            created = [post(c, user, f"post {i}")["id"] for i in range(20)]
        assert len(target.delivered()) < len(created)
        pids = pushpin_pids(tmp_path)
        assert_stops_cleanly(stack, tmp_path, pids)
        delivered = [json.loads(i["formats"]["http-response"]["body"]) for i in target.delivered()]
        assert [body["items"][0]["id"] for body in delivered] == created
        # Drained, and where each target stands saved: started again on the same data, the run
        # command publishes to either target only what is new.
        sent_before = len(target.attempts)
        again = Stack(tmp_path, env=dict(stack.env)).start()
        try:
            with again.client(user) as c:
                post(c, user, "after the restart")
                new = last(c)
            wait_for(lambda: all(t["lag_items"] == 0 for t in health(again)["targets"]), 10)
            sent = [
                i
                for _, status, items in target.attempts[sent_before:]
                if status == 200
                for i in items
            ]
            assert sent and {item["id"] for item in sent} == {new}
            # The same to Pushpin; /health counts deliveries (a firehose item also goes out as
            # a hint on firehose-hint, and sockets' wake-up pings go out too: neither is one).
            deliveries = [
                item
                for item in sent
                if item["channel"] != "firehose-hint" and "http-response" in item["formats"]
            ]
            assert health(again)["published_items"] == 2 * len(deliveries)
        finally:
            again.stop()


def assert_stops_cleanly(stack: Stack, tmp_path: Path, pids: list[int]) -> None:
    assert len(pids) >= 4, pids  # the runner, condure, zurl, proxy, handler
    assert all(alive(pid) for pid in pids)

    assert processes_of(tmp_path), "the test can see Pushpin's processes"
    assert stack.stop(signal.SIGINT) == 0
    assert not [pid for pid in pids if alive(pid)]
    assert processes_of(tmp_path) == []
    with httpx.Client(
        verify=TLS,
    ) as probe:
        for url in (stack.url, stack.origin_url):
            try:
                probe.get(url + "/health", timeout=1)
            except httpx.ConnectError:
                continue
            raise AssertionError(f"{url} still answers after Ctrl-C")


def test_cursors_keep_growing_across_restarts(tmp_path: Path) -> None:
    reader, writer = unique("juliet"), unique("romeo")
    stack = Stack(tmp_path).start()
    with stack.account(reader) as r, stack.account(writer) as w:
        follow(r, f"{writer}/posts")
        since = last(r)
        before = post(w, writer, "before the restart")
        first_last = last(r)
    stack.stop()

    again = Stack(tmp_path, env=dict(stack.env)).start()
    try:
        with again.client(reader) as r, again.client(writer) as w:
            assert last(r) == first_last
            after = post(w, writer, "after the restart")
            body = r.get(f"/api/notifications/posts?since={since}").json()
            assert body["items"] == [before, after]
            assert int(body["last"]) > int(first_last)
    finally:
        again.stop()


def test_restart_after_sigkill_clears_what_the_old_run_left(tmp_path: Path) -> None:
    stack = Stack(tmp_path).start()
    user = unique("juliet")
    with stack.account(user) as c:
        post(c, user, "before the crash")
    old = pushpin_pids(tmp_path)
    assert stack.process is not None
    stack.process.kill()  # SIGKILL: Pushpin and its children live on and keep the ports
    stack.process.wait()
    stack.process = None
    time.sleep(0.2)
    assert any(alive(pid) for pid in old)

    again = Stack(tmp_path, env=dict(stack.env)).start()
    try:
        assert not [pid for pid in old if alive(pid)]
        with again.client(user) as c:
            created = post(c, user, "after the crash")
            assert c.get(f"/api/{user}/content/posts").json()[0] == created
    finally:
        again.stop()


def test_pushpin_is_restarted_when_it_dies(tmp_path: Path) -> None:
    stack = Stack(tmp_path).start()
    try:
        user = unique("juliet")
        with stack.account(user) as c:
            post(c, user, "before")
            kill(pushpin_pids(tmp_path))  # one of them may have ended already
            deadline = time.monotonic() + 15
            while "pushpin is back" not in stack.log():
                assert time.monotonic() < deadline, stack.log()
                time.sleep(0.05)
            assert "pushpin exited with" in stack.log()  # -9, or 1 if its children died first
            created = post(c, user, "after")
            assert c.get(f"/api/{user}/content/posts").json()[0] == created
    finally:
        assert stack.stop() == 0
    assert not [pid for pid in pushpin_pids(tmp_path) if alive(pid)]


def test_a_pushpin_that_cannot_start_is_not_left_running(tmp_path: Path) -> None:
    stack = Stack(tmp_path, env={"LOG_LEVEL": "info"})
    with socket.socket() as taken:  # the publish port is taken: Pushpin never gets ready
        taken.bind(("127.0.0.1", int(stack.env["PUSHPIN_PUBLISH_PORT"])))
        taken.listen()
        try:
            stack.start(timeout=40)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the run command started without its publish port")
        assert stack.process is not None
        assert stack.process.wait(10) == 1
    assert "pushpin did not start" in stack.log()
    assert processes_of(tmp_path) == []
