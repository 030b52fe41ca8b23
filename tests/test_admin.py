"""The admin command (``python -m app admin ...``) run as the operator runs it, in a process of
its own with the stack's settings, against the real run command; what it did is checked through
the HTTP API: accounts it creates log in, a reset password replaces the old one at once, a ban
refuses the account and ends its open stream (its posts stay, or go with --remove-posts), prune
prunes, and a backup taken while posting, restored after a stop, serves its posts, answers a
cursor from after it as pruned (410, reset) and goes on with ids past every cursor handed out.
Accounts, bans, lag and prune run on both backends; backup and restore on SQLite, with
PostgreSQL's advice checked as printed and its id move checked through the stack."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import unique
from tests.databases import SHARED_SECRETS, database_env, fresh_database
from tests.support import PASSWORD, ROOT, TLS, Background, Stack, running
from tests.test_lifecycle import ended
from tests.test_posts_feed import follow, last, post
from tests.test_streams import open_stream, take

NEW_PASSWORD = "an operator's horse"
DURING = 80  # posts at most while a backup runs


def admin(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m app admin ARGS`` with the settings ``env`` (a stack's), as the operator
    runs it on the server."""
    return subprocess.run(
        [sys.executable, "-m", "app", "admin", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
    )


def login_status(stack: Stack, user: str, password: str = PASSWORD) -> int:
    with httpx.Client(verify=TLS, base_url=stack.url, auth=(user, password), timeout=30) as c:
        return c.get("/api/account").status_code


def test_create_account_and_log_in(stack: Stack) -> None:
    user = unique("admin")
    done = admin(stack.env, "create-account", user, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"created {user}"
    assert login_status(stack, user) == 200
    with stack.client(user) as c:  # its channel was made with it
        post(c, user, "my first post")

    again = admin(stack.env, "create-account", user, "--password-stdin", stdin=PASSWORD + "\n")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    short = admin(stack.env, "create-account", unique("admin"), "--password-stdin", stdin="x\n")
    assert short.returncode == 1 and "password must be" in short.stderr
    # No terminal and no --password-stdin: refused, never read from argv.
    prompt = admin(stack.env, "create-account", unique("admin"))
    assert prompt.returncode == 1 and "--password-stdin" in prompt.stderr
    usage = admin(stack.env, "create-account")
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_reset_password_replaces_the_old_one_at_once(stack: Stack) -> None:
    user = unique("admin")
    stack.account(user).close()
    assert login_status(stack, user) == 200  # and now cached by the origin
    done = admin(stack.env, "reset-password", user)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip()
    assert len(printed) >= 16
    assert login_status(stack, user) == 401
    assert login_status(stack, user, printed) == 200

    chosen = admin(stack.env, "reset-password", user, "--password-stdin", stdin=NEW_PASSWORD)
    assert chosen.returncode == 0, chosen.stderr
    assert NEW_PASSWORD not in chosen.stdout
    assert login_status(stack, user, printed) == 401
    assert login_status(stack, user, NEW_PASSWORD) == 200
    unknown = admin(stack.env, "reset-password", unique("nobody"))
    assert unknown.returncode == 1 and "no account" in unknown.stderr


def test_a_ban_refuses_the_account_and_ends_its_stream(stack: Stack, bg: Background) -> None:
    user, reader = unique("banned"), unique("reader")
    with stack.account(user) as c, stack.account(reader) as r:
        kept = post(c, user, "stays after the ban")
        follow(r, f"{user}/posts")
        stream = open_stream(bg, stack.url, "/api/notifications/posts", user)
        post(c, user, "before the ban")
        (event,) = take(bg, stream, 1)  # the positive control: the stream is live
        assert event.json["content"] == "before the ban"

        done = admin(stack.env, "ban", user)
        assert done.returncode == 0, done.stderr
        assert "its posts stay" in done.stdout
        assert ended(bg, stream)
        refused = c.get("/api/account")
        assert refused.status_code == 403
        assert "banned" in refused.json()["error"]
        assert c.post(f"/api/{user}/content/posts", json={"content": "x"}).status_code == 403
        zulip = r.post("/api/v1/fetch_api_key", data={"username": user, "password": PASSWORD})
        assert zulip.status_code == 403 and zulip.json()["code"] == "USER_DEACTIVATED"
        wrong = httpx.get(f"{stack.url}/api/account", verify=TLS, auth=(user, "not the password"))
        assert wrong.status_code == 401  # the ban is told only to who has the credentials
        assert r.get(f"/api/{user}/content/posts/{kept['id']}").status_code == 200

        assert admin(stack.env, "unban", user).returncode == 0
        assert c.get("/api/account").status_code == 200


def test_a_ban_with_remove_posts_deletes_them(stack: Stack) -> None:
    user, reader = unique("banned"), unique("reader")
    with stack.account(user) as c, stack.account(reader) as r:
        follow(r, f"{user}/posts")
        ids = [post(c, user, f"post {n}")["id"] for n in range(3)]
        done = admin(stack.env, "ban", user, "--remove-posts")
        assert done.returncode == 0, done.stderr
        assert "3 posts removed" in done.stdout
        for post_id in ids:
            assert r.get(f"/api/{user}/content/posts/{post_id}").status_code == 404
        events = r.get("/api/notifications/events?since=0").json()["items"]
        deleted = {e["id"] for e in events if e["type"] == "post_deleted"}
        assert set(ids) <= deleted


def test_largest_nodes_and_lag(stack: Stack) -> None:
    user = unique("big")
    with stack.account(user) as c:
        for n in range(3):
            post(c, user, f"post {n}")
        newest = int(last(c))
    done = admin(stack.env, "largest-nodes", "--limit", "100000")
    assert done.returncode == 0, done.stderr
    (line,) = [row for row in done.stdout.splitlines() if row.endswith(f"  {user}/posts")]
    assert line.split()[0] == "3" and int(line.split()[1]) > 0
    lag = admin(stack.env, "lag")
    assert lag.returncode == 0, lag.stderr
    lines = lag.stdout.splitlines()
    assert int(lines[0].removeprefix("newest event: ")) >= newest
    assert lines[1].startswith("http://127.0.0.1:") and "events behind" in lines[1]


def test_prune_now(backend: str, tmp_path: Path) -> None:
    # Retention looks once at start, then not for an hour: only the command prunes.
    env = {"RETENTION_EVENTS": "5", "RETENTION_CHECK_SECONDS": "3600", **database_env(backend)}
    with running(tmp_path / "data", **env) as stack:
        user = unique("prune")
        with stack.account(user) as c:
            start = last(c)
            for n in range(12):
                post(c, user, f"post {n}")
            assert c.get(f"/api/notifications/posts?since={start}").status_code == 200
            done = admin(stack.env, "prune")
            assert done.returncode == 0, done.stderr
            assert int(done.stdout.split()[1]) > 0
            assert "pruned" in done.stderr  # the progress line
            gone = c.get(f"/api/notifications/posts?since={start}")
            assert gone.status_code == 410
    off = admin({**stack.env, "RETENTION_EVENTS": "0", "RETENTION_SECONDS": "0"}, "prune")
    assert off.returncode == 1 and "retention is off" in off.stderr


def test_backup_while_posting_then_restore(tmp_path: Path, bg: Background) -> None:
    backup = tmp_path / "backup.sqlite3"
    with running(tmp_path / "data") as stack:
        user = unique("restore")
        with stack.account(user) as c:
            start = last(c)
            before = [post(c, user, f"before {n}")["id"] for n in range(5)]
            posting = threading.Event()

            def keep_posting() -> None:
                with stack.client(user) as w:
                    for n in range(DURING):  # one page of the listing holds them all
                        if posting.is_set():
                            break
                        post(w, user, f"during {n}")
                        posting.wait(0.02)

            writer = threading.Thread(target=keep_posting)
            writer.start()
            try:
                done = admin(stack.env, "backup", str(backup))
            finally:
                posting.set()
                writer.join()
            assert done.returncode == 0, done.stderr
            assert "backup:" in done.stderr and "(100%)" in done.stderr
            backed_up = int(done.stdout.rsplit("through id ", 1)[1].rstrip(")\n"))
            after = [post(c, user, f"after {n}")["id"] for n in range(3)]
            cursor = last(c)  # a client's cursor from after the backup
            assert int(cursor) > backed_up
            running_restore = admin(stack.env, "restore", str(backup))
            assert running_restore.returncode == 1
            assert "stop the service first" in running_restore.stderr
            listed_before = {p["id"] for p in c.get(f"/api/{user}/content/posts?max=100").json()}
        stack.stop()
        assert admin(stack.env, "backup", str(backup)).returncode == 1  # it exists: not replaced

        done = admin(stack.env, "restore", str(backup))
        assert done.returncode == 0, done.stderr
        assert f"new ids follow {cursor}" in done.stdout
        assert "restore:" in done.stderr and "(100%)" in done.stderr
        stack.start()
        with stack.client(user) as c:
            listed = {p["id"] for p in c.get(f"/api/{user}/content/posts?max=100").json()}
            assert set(before) <= listed  # the backup's posts are there
            assert not set(after) & listed  # and nothing posted after it
            assert listed <= listed_before
            # One snapshot: the posts made during the backup that it holds are the first ones.
            contents = {p["content"] for p in c.get(f"/api/{user}/content/posts?max=100").json()}
            during = sorted(int(t.split()[1]) for t in contents if t.startswith("during "))
            assert during == list(range(len(during)))
            gone = c.get(f"/api/notifications/posts?since={cursor}")
            assert gone.status_code == 410
            go_on = str(int(cursor) + 1)  # the restore's event, a cursor nobody held
            assert gone.json()["last"] == go_on
            first_lost = c.get(f"/api/notifications/posts?since={backed_up + 1}")
            assert first_lost.status_code == 410 and first_lost.json()["last"] == go_on
            stream = open_stream(
                bg, stack.url, "/api/notifications/posts", user, Last_Event_ID=cursor
            )
            (reset,) = take(bg, stream, 1)
            assert reset.name == "reset" and reset.json == {"last": go_on}
            # A cursor from before the backup's end is served as it was.
            assert c.get(f"/api/notifications/posts?since={start}").status_code == 200
            new = post(c, user, "after the restore")
            (event,) = take(bg, stream, 1)
            assert event.json["id"] == new["id"] and int(event.id or 0) > int(cursor)
            stream.close()
            assert (
                c.get(f"/api/notifications/posts?since={go_on}").json()["items"][0]["id"]
                == new["id"]
            )


def test_postgresql_backup_is_advice(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": fresh_database(), **SHARED_SECRETS}
    for args in (["backup", str(tmp_path / "b")], ["restore", str(tmp_path / "b")]):
        done = admin(env, *args)
        assert done.returncode == 1
        printed = done.stdout + done.stderr
        assert "pg_dump --format=custom" in printed and "pg_restore" in printed
        assert "python -m app admin restore --ids-after N" in printed
        assert not (tmp_path / "b").exists()


def test_postgresql_restore_moves_the_ids_past_what_was_handed_out(tmp_path: Path) -> None:
    """Step 4 of the advice, after a pg_restore (here: the same database, as if restored)."""
    with running(tmp_path / "data", **database_env("postgresql")) as stack:
        user = unique("pgrestore")
        with stack.account(user) as c:
            post(c, user, "kept")
            end = int(last(c))
        high = end + 1000
        while_running = admin(stack.env, "restore", "--ids-after", str(high))
        assert while_running.returncode == 1 and "stop every node" in while_running.stderr
        stack.stop()
        done = admin(stack.env, "restore", "--ids-after", str(high))
        assert done.returncode == 0, done.stderr
        stack.start()
        with stack.client(user) as c:
            gone = c.get(f"/api/notifications/posts?since={end + 10}")
            assert gone.status_code == 410 and gone.json()["last"] == str(high + 1)
            assert c.get(f"/api/notifications/posts?since={high}").status_code == 410
            assert int(last(c)) == high + 1
            new = post(c, user, "after")
            items = c.get(f"/api/notifications/posts?since={high + 1}").json()["items"]
            assert [i["id"] for i in items] == [new["id"]]
        missing = admin(stack.env, "restore")
        assert missing.returncode == 1 and "--ids-after" in missing.stderr


@pytest.mark.parametrize("args", [["ban", "nobody@example.com"], ["unban", "x@example.com"]])
def test_unknown_accounts_fail_with_a_message(stack: Stack, args: list[str]) -> None:
    done = admin(stack.env, *args)
    assert done.returncode == 1 and "no account" in done.stderr


def test_restore_refuses_what_is_no_backup(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "data")}
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database, " * 1000)
    for source in (junk, tmp_path / "missing.sqlite3"):
        done = admin(env, "restore", str(source))
        assert done.returncode == 1, done.stdout
        assert str(source) in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "buddycloud.sqlite3").exists()
