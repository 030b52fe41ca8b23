"""The run command: ``python -m app`` starts the origin and Pushpin together.

Clients connect to Pushpin (PORT, 7999 by default), which forwards to the origin and holds the
long-polls. Ctrl-C (or SIGTERM) drains the publisher's outbox, then stops both.
``python -m app --origin-only`` runs the origin alone, for a Pushpin run elsewhere (Docker);
``python -m app admin ...`` is the operator's tool (app/admin_cli.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator

import uvicorn

from app import logs
from app.config import ConfigError, Settings
from app.main import create_app
from app.pushpin import Pushpin, PushpinError

log = logging.getLogger("app")
RESTART_FIRST, RESTART_MAX = 0.5, 30.0


class OriginServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals are handled by serve() below, which also stops Pushpin


BACKLOG = 16384
KEEP_ALIVE_SECONDS = 300


async def serve(settings: Settings, with_pushpin: bool = True) -> int:
    app = create_app(settings)
    server = OriginServer(
        uvicorn.Config(
            app,
            host=settings.origin_host,
            port=settings.origin_port,
            loop="none",
            http="httptools",
            log_level=settings.log_level,
            # Our own request log (app/api/request_log.py) says more, with the request's id;
            # uvicorn's loggers write through the handler app.logs configures.
            access_log=False,
            log_config=None,
            lifespan="on",
            # About 1 s after a channel's first subscriber, Pushpin asks the origin again for
            # every request held on it, through a connection each: thousands at once. With
            # uvicorn's default (2048) the kernel's queue overflowed and Pushpin answered some
            # clients 500. Linux caps this at net.core.somaxconn (4096 here).
            backlog=BACKLOG,
            # Pushpin's zurl keeps its connections to the origin in a pool and did not notice
            # when uvicorn closed an idle one (after its default 5 s): ~1,000 sat in CLOSE-WAIT
            # in zurl, and held requests then failed (500, or no answer). Idle connections stay
            # open longer than zurl keeps them.
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
        )
    )
    pushpin = Pushpin(
        config=settings.pushpin_config,
        rundir=settings.data_dir / "pushpin",
        http_port=settings.port,
        publish_port=settings.publish_port,
        origin=",".join(settings.origins),
        sig_key=settings.grip_sig_key,
        sig_iss=settings.grip_sig_iss,
        binary=settings.pushpin_bin,
        metrics_port=settings.pushpin_metrics_port,
    )

    def on_signal() -> None:
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    origin = asyncio.create_task(server.serve())
    while not server.started:
        if origin.done():
            return 1
        await asyncio.sleep(0.02)
    if not with_pushpin:
        print(f"Ready: origin on {settings.origin_host}:{settings.origin_port}", flush=True)
        await origin
        return 0
    try:
        try:
            await pushpin.start()
        except (PushpinError, OSError) as exc:
            log.error("pushpin did not start: %s", exc)
            server.should_exit = True
            await origin
            return 1
        print(
            f"Ready: clients connect to http://127.0.0.1:{settings.port}/ "
            f"(try /api/notifications/posts); origin on {settings.origin_host}:"
            f"{settings.origin_port}, its Pushpin takes publishes on 127.0.0.1:"
            f"{settings.publish_port}{pushpin_metrics(settings)}, "
            f"{len(settings.grip_urls)} publish target(s), data in "
            f"{settings.data_dir}. Ctrl-C stops.",
            flush=True,
        )
        supervisor = asyncio.create_task(supervise(pushpin))
        await origin
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
    finally:
        await pushpin.stop()  # whatever happened: no Pushpin outlives the run command
    log.info("stopped")
    return 0


def pushpin_metrics(settings: Settings) -> str:
    port = settings.pushpin_metrics_port
    return f" and shows its metrics on 127.0.0.1:{port}" if port else ""


async def supervise(pushpin: Pushpin) -> None:
    """Start Pushpin again whenever it exits under us, with growing pauses between attempts:
    clients reconnect and catch up by cursor, the publisher retries what failed meanwhile."""
    while True:
        code = await pushpin.wait()
        log.error("pushpin exited with %s (see %s); restarting it", code, pushpin.log_path)
        delay = RESTART_FIRST
        while True:
            await asyncio.sleep(delay)
            try:
                await pushpin.start()
                break
            except (PushpinError, OSError) as exc:
                log.error("pushpin did not start: %s; retrying in %.1fs", exc, delay)
                await pushpin.stop()
                delay = min(delay * 2, RESTART_MAX)
        log.info("pushpin is back")


def main() -> int:
    if sys.argv[1:2] == ["admin"]:
        from app import admin_cli

        return admin_cli.main(sys.argv[2:])
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description=__doc__,
        epilog="python -m app admin --help: the operator's tool (accounts, bans, backups)",
    )
    parser.add_argument(
        "--origin-only", action="store_true", help="run the origin without starting Pushpin"
    )
    args = parser.parse_args()
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    import uvloop

    try:
        return uvloop.run(serve(settings, with_pushpin=not args.origin_only))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
