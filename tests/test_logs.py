"""The run command's log: one line a request at debug, JSON when asked, with the request's id
(the one its answer and its error body carry)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.support import TLS, running
from tests.test_publisher import wait_for


def test_at_debug_each_request_is_one_json_line_with_its_id(tmp_path: Path) -> None:
    with running(tmp_path / "data", LOG_LEVEL="debug", LOG_FORMAT="json") as stack:
        # Through Pushpin, to a route with parameters, refused: the id is the client's.
        r = httpx.get(
            stack.url + "/api/someone@example.com/content/posts",
            verify=TLS,
            headers={"X-Request-Id": "trace-0042"},
            timeout=10,
        )
        assert r.status_code == 401 and r.json()["request_id"] == "trace-0042"
        made = httpx.get(stack.origin_url + "/health", verify=TLS, timeout=10).headers[
            "x-request-id"
        ]

        def lines() -> list[dict[str, object]]:
            # Every line is JSON but the run command's Ready line, which is for a person.
            text = stack.log().splitlines()
            return [json.loads(line) for line in text if not line.startswith("Ready:")]

        wait_for(lambda: any(line.get("request_id") == made for line in lines()), 5)
        (refused,) = [line for line in lines() if line.get("request_id") == "trace-0042"]
        assert refused["route"] == "/api/{channel}/content/{node}"
        assert refused["status"] == 401 and refused["method"] == "GET"
        assert refused["level"] == "debug" and refused["logger"] == "app.requests"
        assert isinstance(refused["duration_ms"], float)
        assert any(str(line["logger"]).startswith("uvicorn") for line in lines())


def test_at_info_requests_are_not_logged_and_lines_are_text(tmp_path: Path) -> None:
    with running(tmp_path / "data") as stack:
        r = httpx.get(stack.origin_url + "/health", verify=TLS, headers={"X-Request-Id": "quiet-1"})
        assert r.headers["x-request-id"] == "quiet-1"
        stack.stop()
        log = stack.log()
        assert "quiet-1" not in log
        assert " INFO app: store " in log  # the text format
