"""Fan-out benchmark: how long one post takes to reach N long-polls held by Pushpin.

Two cases, run alternately (origin, raw, origin, raw, ...) so that both see the same machine
state, with the same load generator and the same shipped Pushpin config
(``pushpin/pushpin.conf``: ``message_rate`` and the rest):

origin
    The real run command (``python -m app``: Pushpin and the origin) in a temporary data folder.
    N long-polls ``GET /api/notifications/posts?since=CURSOR``, spread over a few reader accounts
    that follow one writer, are held by Pushpin; then the writer POSTs one post. Measured: from
    just before the POST is sent until the last of the N held requests has its answer, which must
    contain the post. That covers the origin's commit, its publisher's publish request and
    Pushpin's fan-out.
raw
    A bare Pushpin in front of a tiny origin (in this process) that holds every request on one
    channel. N requests are held, then one item (the same bytes as the origin case's answer) is
    published straight to Pushpin's publish port. Measured: from just before the publish request
    until the last delivery: Pushpin's fan-out alone, the floor for the origin case.

With two nodes (``--origins 2``), the N requests are spread over both nodes' Pushpins and the
post is made on the first node, whose publisher publishes to both.

The ratio origin/raw is what the origin adds on top of Pushpin. The post (or publish) is sent
once every request is held: no client waits to send a refused request again, none was refused
for a second, and the servers got no request and used next to no CPU for half a second (on 2
cores, opening 10,000 long-polls keeps them busy for seconds after the last one is sent).
Failures (no answer, an error status, an answer without the post, an answer before the
publish) are counted, never retried once the publish has been sent. CPU of the origin and of
Pushpin is measured from the POST (or publish) until the last answer.

The harness (holding clients, alternating runs, the summary) is ``bench.harness``, shared with
the fan-out cases of the other transports (``bench.sse_fanout``, ``bench.ws_fanout``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from bench.common import (
    followers,
    ms,
)
from bench.harness import (
    Bench,
    Clients,
    Holds,
    RunResult,
    begin_fanout,
    fanout_record,
    long_polls,
    origin_run,
    raw_channel,
    raw_run,
    summarize,
    targets,
)
from bench.setups import SQLITE, Deployment, Setup, deployed
from tests.support import basic

# Each account costs a slow scrypt hash (about 50 ms) to create; a user may hold many
# long-polls at once, so a few readers carry all N of them.
READERS = 20
# A stand-in for the raw case's published body, used only if no origin run delivered anything.
FALLBACK_BODY = b'{"last":"0","items":[' + b'{"content":"' + b"x" * 250 + b'"}]}'


class LongPolls(Bench):
    def __init__(self, d: Deployment, writer: str, readers: list[str], rundir: Path) -> None:
        super().__init__(d, writer, rundir)
        self.readers = readers

    async def origin_run(
        self, run: int, n: int, clients: Clients, echo: Callable[[str], None]
    ) -> tuple[RunResult, bytes | None]:
        since = await clients.cursor()
        path = f"/api/notifications/posts?since={since}"
        auth = [{"Authorization": basic(reader)} for reader in self.readers]
        ports = [int(node.env["PORT"]) for node in self.d.nodes]
        holds = Holds(long_polls(ports, lambda i: (path, auth[i % len(auth)])))

        def check(created: dict[str, Any]) -> Callable[[bytes], bool]:
            return lambda body: created in json.loads(body).get("items", [])

        return await origin_run(self.d, holds, (run, n), clients, check, echo)

    async def raw_run(
        self, run: int, n: int, clients: Clients, echo: Callable[[str], None]
    ) -> RunResult:
        channel = raw_channel("bench", run, n)
        holds = Holds(long_polls([self.raw.http_port], lambda i: (f"/hold/{channel}", {})))
        body = self.body or FALLBACK_BODY
        item = {
            "channel": channel,
            "id": "1",
            "prev-id": "0",
            "formats": {"http-response": {"body": body.decode()}},
        }
        return await raw_run(self.raw, holds, (run, n), clients, item, body, echo)


def run(
    sizes: list[int],
    runs: int,
    workdir: Path,
    *,
    setup: Setup = SQLITE,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fan-out to each number of clients in ``sizes``, ``runs`` times, origin and raw."""
    begin_fanout(sizes, runs, "clients", "held long-polls", setup.label, echo)
    with deployed(setup, workdir) as d:
        writer, readers = followers(d.nodes[0], min(READERS, min(sizes)))
        bench = LongPolls(d, writer, readers, workdir / "raw-pushpin")
        results = uvloop.run(bench.run(sizes, runs, echo))
    rows = summarize(results, sizes, runs, len(readers), setup.origins, "long-polls", echo)
    return fanout_record(rows, targets(rows, "fan-out to {clients:,}"), results)


def run_repeated(
    sizes: list[int],
    runs: int,
    workdir: Path,
    *,
    setup: Setup = SQLITE,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The same case, many runs in a row at one size, judged on failures alone: a failure
    that happens in one run of six is seen here."""
    if len(sizes) != 1:
        raise ValueError("a repeated fan-out is at one size")
    record = run(sizes, runs, workdir, setup=setup, echo=echo)
    record["targets"] = _repeat_targets(record["summary"]["sizes"][0], record["results"])
    return record


def _repeat_targets(row: dict[str, Any], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    failed_runs = [r for r in results if r["case"] == "origin" and r["failures"]]
    return [
        {
            "target": f"fan-out to {row['clients']:,}: 0 failed in {row['runs']} runs in a row",
            "measured": f"{row['origin_failures']:,} failed of {row['clients'] * row['runs']:,} "
            f"({len(failed_runs)} of {row['runs']} runs had failures; raw Pushpin "
            f"{row['raw_failures']:,}); median {ms(row['origin_ms'])} vs raw {ms(row['raw_ms'])}",
            "met": not row["origin_failures"],
        }
    ]
