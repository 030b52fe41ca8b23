"""Running Pushpin beside the origin: render its config from the shipped one, start, stop.

The shipped ``pushpin/pushpin.conf`` holds the tuning; what depends on the machine or on this
run (ports, run folder, the signing key, the route to the origin) is filled in here, into a
private run folder, so that several instances (tests) can run side by side.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import hashlib
import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

log = logging.getLogger("app.pushpin")

DEBIAN_INTERNAL_CONF = Path("/usr/lib/pushpin/internal.conf")
METRICS_PREFIX = "pushpin_"
_PROCESS_NAMES = ("pushpin", "condure", "zurl", "m2adapter", "mongrel2")


class PushpinError(Exception):
    pass


@dataclass
class Pushpin:
    config: Path  # the shipped config
    rundir: Path
    http_port: int
    publish_port: int
    origin: str  # host:port of the origin, or several, comma-separated
    sig_key: str
    sig_iss: str = "pushpin"
    binary: str = "pushpin"
    metrics_port: int = 0  # Pushpin's Prometheus metrics, on loopback (0: none)
    # A path the origin answers through it with a held stream that says "ok" (``_holds``);
    # None for an origin that holds nothing there, or refuses this Pushpin's signature.
    hold_check: str | None = "/health/proxy"
    _process: asyncio.subprocess.Process | None = None

    @property
    def log_path(self) -> Path:
        return self.rundir / "pushpin.log"

    @property
    def pid(self) -> int | None:
        """The runner's process id, while it runs (benchmarks read its processes' memory)."""
        return self._process.pid if self._process else None

    @property
    def sockets_dir(self) -> Path:
        """Pushpin's own run folder (IPC sockets, pid files): the run folder, unless its path is
        too long for a Unix socket's (108 bytes), then a short one in the temp folder."""
        return sockets_dir(self.rundir)

    def render(self) -> Path:
        """Write this run's config into the run folder and return its path."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        (self.rundir / "log").mkdir(exist_ok=True)
        parser = _parser()
        if not parser.read(self.config):
            raise PushpinError(f"cannot read Pushpin config {self.config}")
        parser["global"]["include"] = str(self._render_internal())
        self.sockets_dir.mkdir(parents=True, exist_ok=True)
        parser["global"]["rundir"] = str(self.sockets_dir)
        parser["runner"]["http_port"] = str(self.http_port)
        parser["runner"]["logdir"] = str(self.rundir / "log")
        parser["proxy"]["routesfile"] = str(self.rundir / "routes")
        parser["proxy"]["sig_key"] = self.sig_key
        parser["proxy"]["sig_iss"] = self.sig_iss
        handler = parser["handler"]
        handler["push_in_http_port"] = str(self.publish_port)
        # ZeroMQ inputs go to private sockets: only the HTTP publish port is public.
        handler["push_in_spec"] = "ipc://{rundir}/{ipc_prefix}push-in"
        handler["push_in_sub_specs"] = "ipc://{rundir}/{ipc_prefix}push-in-sub"
        handler["command_spec"] = "ipc://{rundir}/{ipc_prefix}handler-command"
        if self.metrics_port:
            # The handler's metrics take in the proxy's (connections) too: one port serves all.
            handler["prometheus_port"] = f"127.0.0.1:{self.metrics_port}"
            handler["prometheus_prefix"] = METRICS_PREFIX
        (self.rundir / "routes").write_text(self._render_routes())
        path = self.rundir / "pushpin.conf"
        path.unlink(missing_ok=True)
        # It holds the Grip-Sig key: readable by its owner only.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            parser.write(f)
        return path

    def _render_routes(self) -> str:
        """The shipped routes file (next to the config), each route's target set to ours."""
        lines = []
        for line in (self.config.parent / "routes").read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                condition, target = line.split(None, 1)
                _, comma, options = target.partition(",")
                # Several origins: Pushpin tries them in turn (ORIGINS).
                targets = [f"{origin}{comma}{options}" for origin in self.origin.split(",")]
                line = f"{condition} {' '.join(targets)}"
            lines.append(line)
        return "\n".join(lines) + "\n"

    def _render_internal(self) -> Path:
        """Debian's internal.conf expects a system-wide zurl; point it at our own."""
        text = DEBIAN_INTERNAL_CONF.read_text()
        text = text.replace("ipc:///var/run/zurl/", "ipc://{rundir}/{ipc_prefix}")
        path = self.rundir / "internal.conf"
        path.write_text(text)
        return path

    def kill_stale(self) -> None:
        """Kill what a previous run left behind in this run folder (after a SIGKILL, Pushpin's
        children live on and keep the ports)."""
        for pid_file in self.sockets_dir.glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.read_text().strip())
                if _is_pushpin_process(pid):
                    log.warning("killing stale %s (pid %d) left by an earlier run", pid_file, pid)
                    os.kill(pid, signal.SIGKILL)
            pid_file.unlink(missing_ok=True)

    async def start(self, timeout: float = 15.0) -> None:
        self.kill_stale()
        config = self.render()
        logfile = self.log_path.open("ab")
        self._process = await asyncio.create_subprocess_exec(
            self.binary,
            "--config",
            str(config),
            "--merge-output",
            stdout=logfile,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        logfile.close()
        (self.sockets_dir / "runner.pid").write_text(f"{self._process.pid}\n")
        await self._wait_ready(timeout)

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self._process and self._process.returncode is not None:
                    raise PushpinError(
                        f"pushpin exited with {self._process.returncode}; see {self.log_path}"
                    )
                try:
                    published = await client.post(
                        f"http://127.0.0.1:{self.publish_port}/publish/", json={"items": []}
                    )
                    proxied = await client.get(f"http://127.0.0.1:{self.http_port}/health")
                    up = published.status_code == 200 and proxied.status_code == 200
                    if up and (self.hold_check is None or await self._holds(client)):
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise PushpinError(f"pushpin not ready after {timeout}s; see {self.log_path}")
                await asyncio.sleep(0.1)

    async def _holds(self, client: httpx.AsyncClient) -> bool:
        """Can it hold a request yet? Its proxy answers 500 "Accept service unavailable." until
        its handler has connected to it, which may come after both answer requests: seen as
        the first streams of a Pushpin started a moment before (and counted by the origin as
        held, so a user's next one was refused 429). The origin's /health/proxy is a stream
        hold: its "ok" comes through only once the handler has taken it."""
        url = f"http://127.0.0.1:{self.http_port}{self.hold_check}"
        async with client.stream("GET", url) as answer:
            if answer.status_code != 200:
                return False
            async for chunk in answer.aiter_bytes():
                return chunk.startswith(b"ok")
        return False

    async def wait(self) -> int:
        assert self._process is not None
        return await self._process.wait()

    async def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()  # the runner stops its children and exits
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                log.warning("pushpin did not stop in %.0fs; killing it", timeout)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        # Its children run in process groups of their own: any still alive (the runner was
        # killed, or did not stop them) are found by the pid files they write.
        self.kill_stale()


def sockets_dir(rundir: Path) -> Path:
    if len(str(rundir)) <= 70:  # "/pushpin-condure-out-stream" and the like must still fit
        return rundir
    digest = hashlib.sha256(str(rundir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"pushpin-{digest}"


def _parser() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    return parser


def _is_pushpin_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return Path(cmdline).name.startswith(_PROCESS_NAMES)
