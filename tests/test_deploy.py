"""The shipped Pushpin config and docker-compose.yml. No Docker engine runs here: the compose
file is checked as parsed, and its two nodes are then run for real as local processes (the run
command on free ports, on a fresh PostgreSQL database)."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from app.config import Settings
from app.pushpin import Pushpin
from tests.conftest import unique
from tests.support import Holds, Stack, started
from tests.test_cluster import one_publisher_each, publishing, wait_for
from tests.test_posts_feed import follow, last, post

ROOT = Path(__file__).resolve().parent.parent
# What .env gives docker compose (README, Docker); any values do for the tests.
COMPOSE_VARIABLES = {
    "GRIP_SIG_KEY": "k" * 48,
    "SECRET_KEY": "s" * 32,
    "POSTGRES_PASSWORD": "p" * 32,
}
# The compose file's nodes: a Pushpin and the origin beside it.
NODES = (("pushpin1", "origin1"), ("pushpin2", "origin2"))
# Compose's substitutions of the forms the file may use: $$, ${NAME} and ${NAME:?message}.
VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(:?\?[^}]*)?\})")


def shipped_pushpin(path: Path = ROOT / "pushpin" / "pushpin.conf") -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    assert parser.read(path)
    return parser


def interpolate(text: str, variables: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match[1]:
            return "$"
        name, required = match[2], match[3]
        if required and not variables.get(name):
            raise ValueError(f"{name} must be set")
        return variables.get(name, "")

    return VARIABLE.sub(substitute, text)


def load_compose(variables: dict[str, str]) -> dict[str, Any]:
    """docker-compose.yml as docker compose reads it with ``variables`` set."""

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return interpolate(node, variables)
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    loaded: dict[str, Any] = walk(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))
    return loaded


def route(pushpin: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """A compose Pushpin's one route: its options, and its targets (host:port) in the order
    tried, each of which must hold WebSockets and speak to the origin over HTTP."""
    condition, *targets = pushpin["environment"]["PUSHPIN_ROUTE"].split(" ")
    match, *options = condition.split(",")
    assert match == "*"
    hosts = []
    for target in targets:
        host, *target_options = target.split(",")
        assert target_options == ["over_http"], target
        hosts.append(host)
    return dict(option.split("=", 1) for option in options), hosts


def pushpin_command(pushpin: dict[str, Any]) -> tuple[str, list[str]]:
    """A compose Pushpin's shell command: what it prepares, and how it then runs Pushpin."""
    shell, flag, script = pushpin["command"]
    assert (shell, flag) == ("sh", "-c")
    prepare, _, run = script.partition(" && exec ")
    return prepare, shlex.split(run)


def strings(node: Any) -> Iterator[str]:
    """Every string a YAML document holds, keys and values."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def test_shipped_config_is_tuned_for_fan_out() -> None:
    conf = shipped_pushpin()
    # 0: no delivery rate limit. Pushpin's limiter restarts its 25 ms timer on each publish and
    # stalled deliveries under a steady stream of them (docs/performance.md).
    assert int(conf["handler"]["message_rate"]) == 0
    assert "zurl" in conf["runner"]["services"]


def test_compose_keys_must_be_given_and_nothing_else_is_substituted() -> None:
    values = list(strings(yaml.safe_load((ROOT / "docker-compose.yml").read_text())))
    uses = [match for value in values for match in VARIABLE.finditer(value) if match[2]]
    assert {match[2] for match in uses} == set(COMPOSE_VARIABLES)
    # Required everywhere (${NAME:?message}): no default key, and docker compose refuses to
    # start while one is missing.
    assert all(match[3] and match[3].startswith(":?") for match in uses)
    for value in values:
        assert "$" not in VARIABLE.sub("", value), f"compose would read {value!r} otherwise"


def test_compose_runs_two_nodes_on_one_postgres_database() -> None:
    compose = load_compose(COMPOSE_VARIABLES)
    services = compose["services"]
    assert set(services) == {"postgres", *(name for node in NODES for name in node)}
    conf = shipped_pushpin()

    database = services["postgres"]
    assert database["image"].startswith("postgres:")
    volume, mount = database["volumes"][0].split(":")
    assert volume in compose["volumes"] and mount == "/var/lib/postgresql/data"
    check = database["healthcheck"]["test"]
    # Over TCP: the temporary server the image runs while it sets up a volume is on the socket.
    assert check[:2] == ["CMD", "pg_isready"] and check[check.index("-h") + 1] == "127.0.0.1"
    assert "ports" not in database  # the database is on the project's network alone

    pushpins = [pushpin for pushpin, _ in NODES]
    origins = {origin: services[origin]["environment"] for _, origin in NODES}
    publish_port = conf["handler"]["push_in_http_port"]
    # Every origin names every Pushpin's publish endpoint, spelled alike: a target's lease and
    # its saved position are keyed by its URL.
    (grip_url,) = {env["GRIP_URL"] for env in origins.values()}
    assert sorted(grip_url.split(",")) == [f"http://{p}:{publish_port}" for p in pushpins]
    account = database["environment"]
    for name, env in origins.items():
        service = services[name]
        assert service["build"] == "."
        assert service["command"] == ["python", "-m", "app", "--origin-only"]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "ports" not in service  # clients come through a Pushpin
        settings = Settings.from_env(env)  # as the origin reads it: the keys are required
        url = urlsplit(settings.database_url)
        assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432)
        assert url.username == account["POSTGRES_USER"]
        assert url.password == account["POSTGRES_PASSWORD"]
        assert url.path == "/" + account["POSTGRES_DB"]
        assert settings.grip_sig_key == COMPOSE_VARIABLES["GRIP_SIG_KEY"]
        assert settings.secret_key == COMPOSE_VARIABLES["SECRET_KEY"]
        assert settings.grip_sig_iss == conf["proxy"]["sig_iss"]
        assert settings.origin_host == "0.0.0.0"  # the other node's Pushpin comes in too

    host_ports = []
    for pushpin, origin in NODES:
        service = services[pushpin]
        assert service["image"].startswith("fanout/pushpin:")
        assert "./pushpin/pushpin.conf:/etc/pushpin/pushpin.conf:ro" in service["volumes"]
        _, run = pushpin_command(service)
        assert run[0] == "pushpin" and "--merge-output" in run
        assert run[run.index("--config") + 1] == "/tmp/pushpin.conf"
        assert run[run.index("--route") + 1] == "$PUSHPIN_ROUTE"
        options, targets = route(service)
        assert options == {
            "sig_key": COMPOSE_VARIABLES["GRIP_SIG_KEY"],
            "sig_iss": origins[origin]["GRIP_SIG_ISS"],
        }
        # Every origin, its own first: Pushpin tries them in that order.
        every = [f"{name}:{env['ORIGIN_PORT']}" for name, env in origins.items()]
        assert targets[0] == f"{origin}:{origins[origin]['ORIGIN_PORT']}"
        assert sorted(targets) == sorted(every)
        # Only the client port reaches the host, and the origin names it as the proxy's.
        (published,) = service["ports"]
        host_port, container_port = published.split(":")
        assert container_port == conf["runner"]["http_port"]
        assert origins[origin]["PROXY_URL"] == f"http://localhost:{host_port}"
        host_ports.append(host_port)
    assert len(set(host_ports)) == len(NODES)


def test_compose_pushpin_config_differs_from_the_shipped_one_by_its_publish_address(
    tmp_path: Path,
) -> None:
    """The Pushpin containers run the shipped config with the publish port open to the other
    node's origin: the command's preparing step, run here on the shipped file."""
    for pushpin, _ in NODES:
        prepare, _ = pushpin_command(load_compose(COMPOSE_VARIABLES)["services"][pushpin])
        derived = tmp_path / f"{pushpin}.conf"
        local = prepare.replace("/etc/pushpin/pushpin.conf", str(ROOT / "pushpin/pushpin.conf"))
        subprocess.run(["sh", "-c", local.replace("/tmp/pushpin.conf", str(derived))], check=True)
        shipped, made = shipped_pushpin(), shipped_pushpin(derived)
        assert made["handler"]["push_in_http_addr"] == "0.0.0.0"
        changed = {
            (section, key)
            for section in shipped.sections()
            for key in shipped[section]
            if shipped[section][key] != made[section][key]
        }
        assert changed == {("handler", "push_in_http_addr")}
        assert {s: set(made[s]) for s in made.sections()} == {
            s: set(shipped[s]) for s in shipped.sections()
        }


@contextmanager
def compose_as_local_nodes(base: Path, database_url: str) -> Iterator[list[Stack]]:
    """The compose file's nodes as run commands on this machine: each origin's environment,
    and its Pushpin's route as ORIGINS, with every compose address (service:port, and the
    host's localhost:port) moved to a free local port and the database to ``database_url``."""
    services = load_compose(COMPOSE_VARIABLES)["services"]
    publish_port = shipped_pushpin()["handler"]["push_in_http_port"]
    nodes = [Stack(base / pushpin) for pushpin, _ in NODES]
    local: dict[str, str] = {}
    for (pushpin, origin), node in zip(NODES, nodes, strict=True):
        origin_port = services[origin]["environment"]["ORIGIN_PORT"]
        host_port = services[pushpin]["ports"][0].split(":")[0]
        local[f"{pushpin}:{publish_port}"] = f"127.0.0.1:{node.env['PUSHPIN_PUBLISH_PORT']}"
        local[f"{origin}:{origin_port}"] = f"127.0.0.1:{node.env['ORIGIN_PORT']}"
        local[f"localhost:{host_port}"] = f"127.0.0.1:{node.env['PORT']}"

    def moved(text: str) -> str:
        return re.sub(r"[\w.-]+:\d+", lambda address: local.get(address[0], address[0]), text)

    for (pushpin, origin), node in zip(NODES, nodes, strict=True):
        env = {name: moved(value) for name, value in services[origin]["environment"].items()}
        _, targets = route(services[pushpin])
        env.update(
            DATABASE_URL=database_url,
            ORIGIN_HOST="127.0.0.1",
            ORIGIN_PORT=node.env["ORIGIN_PORT"],
            # The run command writes Pushpin's route from ORIGINS, with GRIP_SIG_KEY.
            ORIGINS=",".join(moved(target) for target in targets),
        )
        node.env.update(env)
    with started(nodes):
        yield nodes


def test_the_compose_nodes_run_here_as_one_service(tmp_path: Path, postgres_url: str) -> None:
    with compose_as_local_nodes(tmp_path, postgres_url) as nodes:
        wait_for(lambda: one_publisher_each(nodes), 10)
        targets = {f"http://127.0.0.1:{node.env['PUSHPIN_PUBLISH_PORT']}" for node in nodes}
        assert set(publishing(nodes)) == targets
        # A post made on either node reaches a request held on the other node's Pushpin, by
        # a publish, whichever origin holds that Pushpin's lease.
        for writing, reading in (nodes, nodes[::-1]):
            writer, reader = unique("romeo"), unique("juliet")
            with writing.account(writer) as w, reading.account(reader) as r:
                follow(r, f"{writer}/posts")
                with Holds(reading) as holds:
                    held = holds.hold("posts", r.get, f"/api/notifications/posts?since={last(r)}")
                    created = post(w, writer, f"made on {writing.data_dir.name}")
                    answer = holds.published(held, timeout=2)
                assert [item["id"] for item in answer.json()["items"]] == [created["id"]]


def test_the_run_command_routes_the_shipped_routes_to_its_origin(tmp_path: Path) -> None:
    pushpin = Pushpin(
        config=ROOT / "pushpin" / "pushpin.conf",
        rundir=tmp_path,
        http_port=7999,
        publish_port=5561,
        origin="127.0.0.1:18000",
        sig_key="k" * 32,
    )
    config = pushpin.render()
    routes = [
        line
        for line in (tmp_path / "routes").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert routes == ["* 127.0.0.1:18000,over_http"]
    rendered = configparser.ConfigParser(interpolation=None, strict=False)
    rendered.read(config)
    assert rendered["proxy"]["routesfile"] == str(tmp_path / "routes")
    assert rendered["proxy"]["sig_key"] == "k" * 32
    assert config.stat().st_mode & 0o777 == 0o600  # it holds the key
