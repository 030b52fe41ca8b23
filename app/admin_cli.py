"""``python -m app admin COMMAND``: the operator's tool (the README's "The admin command").

It reads the run command's settings (DATA_DIR, DATABASE_URL, SECRET_KEY, GRIP_URL, ...) and
talks to the store directly. Exit codes: 0 done, 1 failed (the message says why), 2 usage or
configuration. Results go to stdout; progress and errors to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from pathlib import Path

from app.admin import Admin, AdminError, backup, postgres_advice, restore, sqlite_path
from app.config import ConfigError, Settings

USAGE_EXIT = 2


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m app admin",
        description="The operator's tool: accounts, bans, the store's size and lag, pruning,"
        " backups. It reads the same settings as the run command.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = commands.add_parser("create-account", help="create an account (password prompted)")
    c.add_argument("jid")
    c.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    c = commands.add_parser(
        "reset-password", help="give an account a new password (printed, random by default)"
    )
    c.add_argument("jid")
    c.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    c = commands.add_parser(
        "ban", help="ban an account from the service: no login, its connections closed"
    )
    c.add_argument("jid")
    c.add_argument(
        "--remove-posts",
        action="store_true",
        help="also delete its posts (they stay otherwise), as its author would",
    )
    c = commands.add_parser("unban", help="lift an account's ban")
    c.add_argument("jid")
    c = commands.add_parser("largest-nodes", help="the nodes with the most posts")
    c.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    commands.add_parser("lag", help="each publish target's position against the newest event")
    commands.add_parser("prune", help="prune now what retention would prune")
    c = commands.add_parser("backup", help="copy the SQLite store while the service runs")
    c.add_argument("path", type=Path)
    c = commands.add_parser(
        "restore", help="put a backup in place (service stopped) and move the log's ids on"
    )
    c.add_argument("path", type=Path, nargs="?", help="the backup (SQLite)")
    c.add_argument(
        "--ids-after",
        type=int,
        metavar="N",
        help="the highest event id handed out before, if the replaced database is lost",
    )
    return top


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def read_password(from_stdin: bool, confirm: bool = True) -> str:
    """A password from one line of stdin, or typed at a prompt (never from the command line,
    where other users of the machine may see it)."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise AdminError("no terminal to ask the password on: pipe it with --password-stdin")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Again: ") != password:
        raise AdminError("the two passwords differ")
    return password


async def run(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    if command == "backup":
        last = await asyncio.to_thread(backup, settings, args.path, progress)
        print(f"backed up {sqlite_path(settings)} to {args.path} (events through id {last})")
        return 0
    if command == "restore":
        if args.ids_after is not None and args.ids_after < 0:
            raise AdminError("--ids-after must be 0 or more")
        done = await restore(settings, args.path, args.ids_after, progress)
        where = f" (the replaced database is at {done.aside})" if done.aside else ""
        print(
            f"restored: events through id {done.last}; new ids follow {done.ids_after}, and"
            f" cursors from {done.last + 1} to {done.ids_after} are answered as pruned"
            f" (go on from {done.ids_after + 1}){where}"
            if done.ids_after > done.last
            else f"restored: events through id {done.last}{where}"
        )
        return 0
    password = None
    if command == "create-account":
        password = read_password(args.password_stdin)
    elif command == "reset-password" and args.password_stdin:
        password = read_password(True)
    async with Admin.opened(settings, progress) as admin:
        if command == "create-account":
            assert password is not None
            print(f"created {await admin.create_account(args.jid, password)}")
        elif command == "reset-password":
            new = await admin.reset_password(args.jid, password)
            print(new if password is None else "password changed")
        elif command == "ban":
            removed = await admin.ban(args.jid, args.remove_posts)
            kept = f"{removed} posts removed" if args.remove_posts else "its posts stay"
            print(f"banned {args.jid}: it cannot log in, its connections were closed; {kept}")
        elif command == "unban":
            await admin.unban(args.jid)
            print(f"unbanned {args.jid}")
        elif command == "largest-nodes":
            if args.limit < 1:
                raise AdminError("--limit must be at least 1")
            print(f"{'posts':>10} {'bytes':>12}  node")
            for node in await admin.largest_nodes(args.limit):
                print(f"{node.posts:>10} {node.bytes:>12}  {node.channel}/{node.name}")
        elif command == "lag":
            newest, lags = await admin.lag()
            print(f"newest event: {newest}")
            for lag in lags:
                state = "stalled" if lag.stalled else "failing" if lag.failing else "ok"
                print(
                    f"{lag.target}: {lag.lag_events} events behind ({lag.lag_items} deliveries,"
                    f" oldest {lag.lag_seconds:.1f}s) {state}"
                )
        elif command == "prune":
            print(f"pruned {await admin.prune()} events")
        for line in admin.told:
            progress(line)
    return 0


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)  # exits 2 on bad usage
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    if args.command == "backup" and sqlite_path(settings) is None:
        print(postgres_advice(settings))
        return 1
    try:
        return asyncio.run(run(args, settings))
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
