"""The shipped Pushpin config and docker-compose.yml (no Docker engine runs here: we parse)."""

from __future__ import annotations

import configparser
from pathlib import Path

import yaml

from app.pushpin import Pushpin

ROOT = Path(__file__).resolve().parent.parent


def shipped_pushpin() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    assert parser.read(ROOT / "pushpin" / "pushpin.conf")
    return parser


def test_shipped_config_is_tuned_for_fan_out() -> None:
    conf = shipped_pushpin()
    # 0: no delivery rate limit. Pushpin's limiter restarts its 25 ms timer on each publish and
    # stalled deliveries under a steady stream of them (docs/performance.md).
    assert int(conf["handler"]["message_rate"]) == 0
    assert "zurl" in conf["runner"]["services"]


def test_compose_runs_official_pushpin_with_the_shipped_config_in_front_of_the_app() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    pushpin, app = compose["services"]["pushpin"], compose["services"]["app"]
    conf = shipped_pushpin()

    assert pushpin["image"].startswith("fanout/pushpin:")
    assert "7999:7999" in pushpin["ports"]
    assert "./pushpin/pushpin.conf:/etc/pushpin/pushpin.conf:ro" in pushpin["volumes"]
    command = pushpin["command"]
    assert command[command.index("--config") + 1] == "/etc/pushpin/pushpin.conf"
    route = command[command.index("--route") + 1]
    env = app["environment"]
    assert route.endswith(f" {env['ORIGIN_HOST']}:{env['ORIGIN_PORT']}")
    assert "sig_key=${GRIP_SIG_KEY" in route and "sig_iss=pushpin" in route

    # The app lives in Pushpin's network namespace: loopback reaches both ways.
    assert app["network_mode"] == "service:pushpin"
    assert env["GRIP_URL"] == f"http://127.0.0.1:{conf['handler']['push_in_http_port']}"
    assert env["GRIP_SIG_ISS"] == conf["proxy"]["sig_iss"]
    assert env["GRIP_SIG_KEY"].startswith("${GRIP_SIG_KEY")
    assert app["command"] == ["python", "-m", "app", "--origin-only"]
    assert "data:/data" in app["volumes"] and env["DATA_DIR"] == "/data"
    assert (ROOT / "Dockerfile").exists()


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
    assert routes == ["* 127.0.0.1:18000"]
    rendered = configparser.ConfigParser(interpolation=None, strict=False)
    rendered.read(config)
    assert rendered["proxy"]["routesfile"] == str(tmp_path / "routes")
    assert rendered["proxy"]["sig_key"] == "k" * 32
    assert config.stat().st_mode & 0o777 == 0o600  # it holds the key
