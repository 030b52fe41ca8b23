"""docs/performance.md's sections for the streaming transports (server-sent events and
WebSockets): their tables, and why a target was missed. ``bench.report`` puts them in place."""

from __future__ import annotations

from typing import Any

from bench import report_throughput
from bench.common import median
from bench.common import number as _n

NOUNS = {"ssefanout": "SSE streams", "wsfanout": "WebSockets"}
# Another raw case beside the plain one, by its key in the summary rows: its column's title,
# and what the table's note says of it.
EXTRA = {
    "raw_wake": (
        "raw Pushpin woken by ping",
        " Raw Pushpin woken by ping: the same raw sockets, but a ping is published and the tiny "
        "origin answers each pong with the frame, as the origin does: the round trip per socket "
        "without the origin's own work.",
    ),
    "raw_linked": (
        "raw Pushpin, streams with a prev-id and a next link",
        " Raw Pushpin, streams with a prev-id and a next link: the same raw streams, but each "
        "held as the origin's are, with `prev-id` on its channel and a next link they all share "
        "(which the tiny origin answers with the same hold), and the item published with its "
        "`prev-id`: what Pushpin's gap detection costs, without the origin.",
    ),
}
HELD = {
    "ssefanout": "anonymous streams of the firehose (`GET /api/firehose`, `Accept: "
    "text/event-stream`), against streams held on one channel of a raw Pushpin, published one "
    "`http-stream` item with the same event's bytes",
    "wsfanout": "one WebSocket (`/api/ws`) per follower of the writer's channel, each its own "
    "user (seeded in bulk), online from the run's cursor, against sockets subscribed to one "
    "channel of a raw Pushpin, published one `ws-message` item with the same frame's text. "
    "The origin's sockets are woken by a ping each, 50 at a time 20 ms apart (`app/wakes.py`), "
    "and each pong is a request to the origin that reads the socket's events from the log "
    "(`app/sockets.py`): one origin request per socket per post, which the raw case does not "
    "make",
}


def _runs(r: dict[str, Any], case: str, clients: int, what: str) -> float | None:
    """The median over ``case``'s runs at ``clients`` of ``what`` (None where missing)."""
    values = [
        v
        for x in r["results"]
        if x["case"] == case and x["clients"] == clients and (v := x.get(what)) is not None
    ]
    return median(values)


def _requests(r: dict[str, Any], clients: int) -> str:
    """What the origin was asked while the clients were opened and settled, by kind, and
    after the post (medians of the runs)."""
    kinds: dict[str, list[int]] = {}
    for x in r["results"]:
        if x["case"] == "origin" and x["clients"] == clients:
            for kind, n in (x.get("origin_requests") or {}).items():
                kinds.setdefault(kind, []).append(n)
    held = ", ".join(f"{kind} {median(ns):,.0f}" for kind, ns in sorted(kinds.items()))
    after = _runs(r, "origin", clients, "origin_requests_after_post")
    return f"{held or 'n/a'}; {_n(after, 0)}"


def fanout(r: dict[str, Any]) -> list[str]:
    noun = NOUNS[r["case"]]
    extra = next((k for k in EXTRA if any(f"{k}_ms" in row for row in r["summary"]["sizes"])), None)
    lines = [
        f"| {noun} | origin: POST to last delivery (first, median) | raw Pushpin: publish to "
        "last delivery (first, median) | ratio | failed (origin, raw) | CPU from the POST: "
        "origin, Pushpin (raw Pushpin) | RSS while held: origin, Pushpin (raw Pushpin) "
        "| origin requests: until the post; after it |"
        + (f" {EXTRA[extra][0]}: last delivery; failed; Pushpin CPU |" if extra else ""),
        "|---:|---:|---:|---:|---:|---:|---:|---|" + ("---:|" if extra else ""),
    ]
    for row in r["summary"]["sizes"]:
        n = row["clients"]
        other = (
            f" {_n(row.get(f'{extra}_ms'))} ms; {row.get(f'{extra}_failures')}; "
            f"{_n(row.get(f'{extra}_pushpin_cpu_seconds'), 2)} s |"
            if extra
            else ""
        )
        lines.append(
            f"| {n:,} | {_n(row['origin_ms'])} ms ({_n(_runs(r, 'origin', n, 'first_ms'))}, "
            f"{_n(_runs(r, 'origin', n, 'median_ms'))}) | {_n(row['raw_ms'])} ms "
            f"({_n(_runs(r, 'raw', n, 'first_ms'))}, {_n(_runs(r, 'raw', n, 'median_ms'))}) "
            f"| {_n(row['ratio'], 2)} | {row['origin_failures']}, {row['raw_failures']} "
            f"| {_n(row['origin_cpu_seconds'], 2)} s, {_n(row['pushpin_cpu_seconds'], 2)} s "
            f"({_n(row['raw_pushpin_cpu_seconds'], 2)} s) "
            f"| {_n(row['origin_rss_mb'], 0)} MB, {_n(row['pushpin_rss_mb'], 0)} MB "
            f"({_n(row['raw_pushpin_rss_mb'], 0)} MB) | {_requests(r, n)} |{other}"
        )
    lines += [
        "",
        f"Median of {r['params']['runs']} runs of each case, origin and raw alternating: "
        f"{HELD[r['case']]}. Opened 50 every 50 ms (refusals sent again), and the post made "
        "once no client waited to try again, none was refused for 1 s, and the servers got no "
        "request and used under 0.1 core for 0.5 s. Origin requests until the post: the realtime "
        "ones the origin handled from the first client opened until then, by kind "
        "(`stream_repair` is Pushpin calling a held stream's next link; sockets are not "
        "counted there); after it: every request from the POST to the last delivery, the "
        "POST's own included; medians a run."
        + (EXTRA[extra][1] if extra else "")
        + " CPU: from the POST (or the raw publish) until the last delivery. Memory: "
        "resident, while all were held; Pushpin's is the sum of its processes.",
    ]
    return lines


def throughput(r: dict[str, Any]) -> list[str]:
    lines = [
        report_throughput.HEAD + "streams (opened again) "
        "| CPU a post delivered: origin, Pushpin | cores: origin, Pushpin, clients |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report_throughput.cases(r):
        lines.append(
            f"{report_throughput.cells(s)}| {_n(s.get('origin_cpu_ms_per_post'), 2, ' ms')}, "
            f"{_n(s.get('pushpin_cpu_ms_per_post'), 2, ' ms')} "
            f"| {_n(s.get('origin_cpu_cores'), 2)}, {s['pushpin_cpu_cores']:.2f}, "
            f"{s['client_cpu_cores']:.2f} |"
        )
    p = r["params"]
    lines += [
        "",
        f"{p['rate']:,.0f} posts/s offered for {p['seconds']:.0f} s over {p['channels']} "
        f"channels, post k to channel k mod {p['channels']} by its owner; each channel's "
        "reader holds one SSE stream of its posts feed (raw Pushpin: a stream on one channel "
        "each, published `http-stream` items every 5 ms). The posts start once every stream "
        "is held and the origin got no request for 1 s (each reader's stream has a next link "
        "of its own, which Pushpin calls about 1 s after subscribing, through its limiter). "
        "CPU a post: CPU seconds from the first post to the last delivery over the posts "
        "delivered; cores: the same over that time.",
    ]
    return lines


def why(records: dict[str, dict[str, Any]], label: str) -> list[str]:
    """For each target of these cases missed, or delivery failed, on one setup (``records``
    by case), what the numbers say about why."""
    out = []
    for case, record in records.items():
        failed = case in NOUNS and any(
            row["origin_failures"] or row["raw_failures"] for row in record["summary"]["sizes"]
        )
        if case in NOUNS and (failed or not all(t["met"] for t in record["targets"])):
            out.append(_why_fanout(record, label))
    streams = records.get("ssethroughput")
    if streams and not all(t["met"] for t in streams["targets"]):
        out.append(_why_throughput(streams, records.get("throughput"), label))
    return out


def _why_throughput(r: dict[str, Any], polls: dict[str, Any] | None, label: str) -> str:
    cases = {s["case"]: s for s in r["summary"]["cases"]}
    direct, origin, raw = cases["direct"], cases["origin"], cases["raw"]
    cpus = r["machine"]["cpus"]
    used = sum(direct.get(k) or 0 for k in ("origin_cpu_cores", "pushpin_cpu_cores"))
    used += direct["client_cpu_cores"]
    text = (
        f"- **Throughput with SSE ({label}).** POSTs direct: {direct['stored_per_second']:,.0f} "
        f"posts/s stored, p50 {_n(direct['delivery_p50_ms'])} ms and p99 "
        f"{_n(direct['delivery_p99_ms'])} ms from the POST to the delivery, the POST itself "
        f"answered in {_n(direct['post_p50_ms'])} ms (p50); the origin used "
        f"{_n(direct.get('origin_cpu_cores'), 2)} cores "
        f"({_n(direct.get('origin_cpu_ms_per_post'), 2)} ms a post), and the origin, "
        f"Pushpin and the clients {used:.2f} of the {cpus} cores, on a machine whose load "
        f"average was {r['machine']['load_average'][0]:.2f} when the "
        f"case began. Raw Pushpin delivered {raw['delivered_per_second']:,.0f}/s with p99 "
        f"{_n(raw['delivery_p99_ms'])} ms at {raw['pushpin_cpu_cores']:.2f} cores. Through "
        f"Pushpin, every POST is also proxied: {origin['stored_per_second']:,.0f} posts/s "
        f"stored with Pushpin at {origin['pushpin_cpu_cores']:.2f} cores "
        f"({_n(origin.get('pushpin_cpu_ms_per_post'), 2)} ms a post, against "
        f"{_n(direct.get('pushpin_cpu_ms_per_post'), 2)} ms with POSTs direct)."
    )
    if polls is not None:
        long_polls = {s["case"]: s for s in polls["summary"]["cases"]}
        lp = long_polls.get("direct")
        if lp is not None:
            text += (
                f" With long-polls on the same setup, POSTs direct: "
                f"{lp['stored_per_second']:,.0f}/s stored, p99 {_n(lp['delivery_p99_ms'])} ms: "
                "each delivery there is also a new request through Pushpin to the origin."
            )
    return text


def _why_fanout(r: dict[str, Any], label: str) -> str:
    parts = []
    for row in r["summary"]["sizes"]:
        n = row["clients"]
        first, raw_first = _runs(r, "origin", n, "first_ms"), _runs(r, "raw", n, "first_ms")
        spread, raw_spread = _less(row["origin_ms"], first), _less(row["raw_ms"], raw_first)
        parts.append(
            f"at {n:,}, the first client had the post {_n(first)} ms after the POST (raw "
            f"{_n(raw_first)} ms after the publish) and the rest within {_n(spread)} ms more "
            f"(raw {_n(raw_spread)} ms), {row['origin_failures']:,} failed"
        )
    if r["case"] == "wsfanout":
        return _why_sockets(r, label, parts)
    return (
        f"- **Fan-out to {NOUNS[r['case']]} ({label}).** The time to the first delivery is the "
        "POST's own (its commit, and the publisher's publish request); what follows it is "
        "Pushpin's fan-out: " + "; ".join(parts) + "." + _failed_runs(r)
    )


def _failed_runs(r: dict[str, Any]) -> str:
    """The runs with failed deliveries, each with its reasons and what the origin was asked."""
    runs = [x for x in r["results"] if x["failures"] and x["case"] in ("origin", "raw")]
    if not runs:
        return ""
    return " Runs with failures: " + "; ".join(map(_failed_run, runs)) + "; the others had none."


def _failed_run(x: dict[str, Any]) -> str:
    reasons = ", ".join(f"{n:,} {why}" for why, n in x["failure_reasons"].items())
    text = f"{x['case']} run {x['run']} at {x['clients']:,}: {x['failures']:,} failed ({reasons})"
    asked = x.get("origin_requests")
    if asked is not None:
        kinds = ", ".join(f"{kind} {n:,}" for kind, n in asked.items()) or "none counted"
        text += (
            f", the origin's requests until the post: {kinds}; after it: "
            f"{x['origin_requests_after_post']}"
        )
    if x.get("origin_server_errors") is not None:
        text += f"; the origin's own 5xx answers: {x['origin_server_errors']:,}"
    return text


def _why_sockets(r: dict[str, Any], label: str, parts: list[str]) -> str:
    costs = []
    for row in r["summary"]["sizes"]:
        cpu, n = row["origin_cpu_seconds"], row["clients"]
        per_socket = None if cpu is None else cpu / n * 1000
        costs.append(
            f"at {n:,}, {_n(cpu, 2)} s of origin CPU ({_n(per_socket, 2)} ms a socket) and "
            f"{_n(row['pushpin_cpu_seconds'], 2)} s of Pushpin's (raw Pushpin: "
            f"{_n(row['raw_pushpin_cpu_seconds'], 2)} s)"
        )
    woken = [
        f"at {row['clients']:,}, {_n(row.get('raw_wake_ms'))} ms to the last delivery, "
        f"{row.get('raw_wake_failures')} failed"
        for row in r["summary"]["sizes"]
        if "raw_wake_ms" in row
    ]
    return (
        f"- **Fan-out to WebSockets ({label}).** By design (`app/sockets.py`) a post wakes each "
        "socket with a ping, 50 at a time 20 ms apart (`app/wakes.py`), and the origin answers "
        "each pong with the socket's events read from the log: one origin request per socket, "
        "one after another on the origin's one event loop, where raw Pushpin sends the frame "
        "itself. "
        + _capital("; ".join(parts))
        + ". From the POST to the last delivery: "
        + "; ".join(costs)
        + "."
        + (
            " Raw Pushpin with its sockets woken by pings all at once (one publish, each pong "
            "answered with the frame by a tiny origin): " + "; ".join(woken) + ". A socket "
            "failed there is one Pushpin 1.36 closed, without a close frame and without its "
            "pong reaching the origin (its proxy logs `wsproxysession ... target error`): "
            "each pong is a new request towards zurl, of which Pushpin queues at most 100 "
            "(`OUT_HWM`), which is why the origin paces its pings."
            if woken
            else ""
        )
    )


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _less(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


TABLES = {"ssefanout": fanout, "wsfanout": fanout, "ssethroughput": throughput}
