"""The API under hostile input and load, against a real manager process (waitress as main.py runs it).

Malformed bodies and URLs answer 4xx in JSON; logs are bounded tails; slow and many clients do
not starve it; slow work (dry runs) is bounded and answers 503 when full; and a bounded
schemathesis run finds no server error and no status code the OpenAPI document does not declare.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from flops_manager.orchestration.local import tail_file
from tests.conftest import run_flops
from tests.manager_process import Manager

REQUEST_TIMEOUT_S = 3
UNREACHABLE = "https://flops-test-repository.invalid/user/model.git"


@pytest.fixture(scope="module")
def manager(module_tmp: Callable[[str], Path]) -> Iterator[Manager]:
    home = module_tmp("hardened-home")
    instance = Manager(home, "http://127.0.0.1:1", extra_env={
        "FLOPS_API_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S), "FLOPS_API_CLEANUP_INTERVAL": "1",
        "FLOPS_API_SLOW_WORKERS": "1", "FLOPS_DRY_RUN_TIMEOUT": "6", "FLOPS_REPO_SCHEMES": "https,http",
        "HF_HUB_OFFLINE": "1", "HF_HOME": str(home / "hf"),
    })  # fmt: skip
    try:
        config = {"dataset_name": "digits", "number_of_partitions": 2, "data_tag": "digits", "shared": True}
        assert instance.call("POST", "/api/flops/mocks", json={"mock_data_configuration": config}).status_code == 200
        yield instance
    finally:
        instance.stop()


def a_project(manager: Manager) -> str:
    body = {
        "ml_repo_url": UNREACHABLE, "ml_model_flavor": "sklearn",
        "training_configuration": {"data_tags": ["digits"], "training_rounds": 1},
    }  # fmt: skip
    answer = manager.call("POST", "/api/flops/projects", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["project_id"])


def raw(manager: Manager, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (what requests would quote or refuse); status, headers, body."""
    with socket.create_connection(("127.0.0.1", manager.port), timeout=30) as connection:
        connection.sendall(request)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def call(manager: Manager, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {manager.admin_token}", **kwargs.pop("headers", {})}
    return requests.request(method, manager.url + path, headers=headers, timeout=60, **kwargs)


def assert_json_error(answer: requests.Response, status: int, *words: str) -> None:
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"].startswith("application/json")
    message = answer.json()["message"]
    for word in words:
        assert word in message, message


def test_malformed_inputs_answer_4xx_in_json(manager: Manager) -> None:
    projects = "/api/flops/projects"
    deep_json = b"[" * 100_000 + b"]" * 100_000
    assert_json_error(call(manager, "POST", projects, data=deep_json), 422, "deeper than 32 levels")
    deep_yaml = b"- " * 100_000 + b"1\n"
    assert_json_error(call(manager, "POST", projects, data=deep_yaml), 422, "deeper than 32 levels")
    deep_flow = b"a: " + b"{b: " * 50_000 + b"1" + b"}" * 50_000
    assert_json_error(call(manager, "POST", projects, data=deep_flow), 422, "deeper than 32 levels")
    blocks = "".join(f"{' ' * i}k{i}:\n" for i in range(1200)).encode()  # block style: no brackets at all
    assert_json_error(call(manager, "POST", projects, data=blocks), 422, "32 levels")
    assert_json_error(call(manager, "POST", projects, data=b"\xff\xfe{\x00}"), 400, "not UTF-8")
    assert_json_error(call(manager, "POST", projects, data=b'{"customerID": "a\\u0000b"}'), 400, "NUL")
    assert_json_error(call(manager, "POST", projects, data=b"a: &x [1]\nb: *x\n"), 422, "neither valid JSON nor YAML")
    ext = {"ml_repo_url": "ext::sh -c id", "ml_model_flavor": "sklearn"}
    assert_json_error(call(manager, "POST", projects, json=ext), 422, "not an allowed source")
    assert_json_error(call(manager, "POST", projects, data=b"x" * (2 * 2**20)), 413, "larger than")
    for not_an_object in (b"[null, null]", b'"text"', b"3", b"null"):  # JSON, but no SLA (schemathesis found the first)
        assert_json_error(call(manager, "POST", f"{projects}?dry_run=1", data=not_an_object), 422, "JSON object")
    for body_route in ("/api/flops/mocks", "/api/flops/tokens"):
        assert_json_error(call(manager, "POST", body_route, json=[None, None]), 422)
    for path in ("/api/flops/projects/%00", "/api/flops/projects?status=%00", "/api/flops/projects/a%0Ab/logs"):
        assert_json_error(call(manager, "GET", path), 400, "control character")
    project_id = a_project(manager)
    for tail in ("abc", "-1", "1e3", "%00", "9" * 20):
        assert_json_error(call(manager, "GET", f"/api/flops/projects/{project_id}/logs?tail={tail}"), 400)
    assert call(manager, "GET", f"/api/flops/projects/{project_id}/logs?tail=99999").status_code == 200
    assert_json_error(call(manager, "POST", "/api/flops/mocks"), 400, "needs a JSON body")
    assert_json_error(call(manager, "POST", "/api/flops/tokens", data=b"customer_id: eve"), 422, "not valid JSON")
    assert_json_error(call(manager, "POST", "/api/flops/tokens", data=b"[" * 5000), 422, "32 levels")
    wrong_method = call(manager, "PUT", projects)
    assert_json_error(wrong_method, 405)
    assert set(wrong_method.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    status, _headers, body = raw(
        manager, b"GET /api/flops/projects/\x00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert 400 <= status < 500, (status, body)
    # Nothing above reached the store.
    assert len(call(manager, "GET", projects).json()) == 1


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def test_logs_are_bounded_tails_read_from_the_end(manager: Manager, tmp_path: Path) -> None:
    project_id = a_project(manager)
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline
        and "builder" not in call(manager, "GET", f"/api/flops/projects/{project_id}").json()["components"]
    ):
        time.sleep(0.3)
    log = manager.home / "projects" / project_id / "logs" / "builder.log"
    assert log.is_file()
    with log.open("ab") as handle:  # 300 MB of log (sparse: no disk), then the lines that matter
        handle.truncate(log.stat().st_size + 300 * 2**20)
        handle.seek(0, 2)
        handle.write(b"".join(f"line {i}\n".encode() for i in range(10_000)))
    assert manager.process is not None
    before = rss(manager.process.pid)
    started = time.monotonic()
    for _ in range(3):
        answer = call(manager, "GET", f"/api/flops/projects/{project_id}/logs?component=builder&tail=3")
        assert answer.status_code == 200 and answer.json()["builder"] == "line 9997\nline 9998\nline 9999"
    elapsed = time.monotonic() - started
    grown = (rss(manager.process.pid) - before) / 2**20
    print(f"3 tails of a 300 MB log: {elapsed:.2f} s, manager RSS +{grown:.0f} MB")
    assert elapsed < 5 and grown < 64
    many = call(manager, "GET", f"/api/flops/projects/{project_id}/logs?component=builder&tail=99999").json()
    assert many["builder"].count("\n") < 5000 and len(many["builder"]) <= 2**20
    # The helper itself: the last lines, never more than the byte bound, "" for no file.
    small = tmp_path / "small.log"
    small.write_bytes(b"a\nb\nc\n")
    assert tail_file(small, 2) == "b\nc" and tail_file(small, 0) == "" and tail_file(tmp_path / "none", 5) == ""
    assert tail_file(log, 10**6, max_bytes=4096).count("\n") < 4096 // 9


def slow_loris(port: int, stop: threading.Event, cut_off: list[float]) -> None:
    """One client sending its request headers a byte every 0.3 s; notes when the server hangs up."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        while not stop.is_set():
            try:
                connection.sendall(b"X")
                connection.settimeout(0.3)
                if connection.recv(1024) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        cut_off.append(time.monotonic() - started)


def plain_get(port: int, path: str = "/") -> tuple[float, int]:
    """One request without keep-alive; (seconds, status), status 0 when it failed."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
            connection.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := connection.recv(65536):
                data += chunk
        return time.monotonic() - started, int(data.split()[1])
    except (OSError, IndexError, ValueError):
        return time.monotonic() - started, 0


def test_slow_and_many_clients_do_not_starve_the_api(manager: Manager) -> None:
    stop = threading.Event()
    cut_off: list[float] = []
    lorises = [threading.Thread(target=slow_loris, args=(manager.port, stop, cut_off)) for _ in range(20)]
    idle = [socket.create_connection(("127.0.0.1", manager.port)) for _ in range(150)]  # connect, say nothing
    for thread in lorises:
        thread.start()
    try:
        time.sleep(1)
        started = time.monotonic()
        with ThreadPoolExecutor(200) as pool:
            load = [pool.submit(plain_get, manager.port, "/api/openapi.json" if i % 3 else "/") for i in range(600)]
            health = []
            while not all(f.done() for f in load):
                health.append(plain_get(manager.port))
                time.sleep(0.1)
            results = [f.result() for f in load]
        wall = time.monotonic() - started
        ok = sum(1 for _, status in results if status == 200)
        slowest = max(seconds for seconds, _ in results)
        worst_health = max(seconds for seconds, _ in health)
        print(f"600 requests from 200 clients (no keep-alive) beside 20 slow-loris and 150 idle connections: "
              f"{ok} answered 200, slowest {slowest:.2f} s, wall {wall:.1f} s; /health during it: "
              f"{len(health)} probes, worst {worst_health:.2f} s")  # fmt: skip
        assert ok == 600 and slowest < 20 and worst_health < 5
        assert all(status == 200 for _, status in health)
        # The slow-loris clients are cut off after the whole-request deadline, however busily they trickle.
        deadline = time.monotonic() + REQUEST_TIMEOUT_S + 10
        while len(cut_off) < len(lorises) and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"slow-loris connections closed by the server after {min(cut_off):.1f}-{max(cut_off):.1f} s")
        assert len(cut_off) == len(lorises) and max(cut_off) < REQUEST_TIMEOUT_S + 10
    finally:
        stop.set()
        for thread in lorises:
            thread.join(10)
        for connection in idle:
            connection.close()


def test_slow_work_is_bounded_and_answers_503_when_full(manager: Manager, silent_git_server: str) -> None:
    body = {
        "ml_repo_url": silent_git_server, "ml_model_flavor": "sklearn",
        "training_configuration": {"data_tags": ["digits"], "training_rounds": 1},
    }  # fmt: skip
    first: list[requests.Response] = []
    hung = threading.Thread(
        target=lambda: first.append(call(manager, "POST", "/api/flops/projects?dry_run=1", json=body))
    )
    hung.start()
    try:
        time.sleep(1.5)  # the one slow-work slot (FLOPS_API_SLOW_WORKERS=1) is taken
        busy = call(manager, "POST", "/api/flops/projects?dry_run=1", json=body)
        assert_json_error(busy, 503, "busy")
        assert int(busy.headers["Retry-After"]) >= 1
        started = time.monotonic()
        assert requests.get(manager.url + "/", timeout=5).status_code == 200
        assert call(manager, "GET", "/api/flops/projects").status_code == 200
        assert time.monotonic() - started < 2
    finally:
        hung.join(30)
    assert first and first[0].status_code == 504, first[0].text if first else "no answer"


def test_a_bounded_schemathesis_run_finds_no_server_error_or_undeclared_status(
    manager: Manager, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"{manager.url}/api/openapi.json",
        "--header", f"Authorization: Bearer {manager.admin_token}",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,unsupported_method",
        "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--seed", "12",
        "--max-time", "80", "--request-timeout", "30", "--workers", "2", "--no-shrink",
        "--report", "ndjson", "--report-dir", str(report), "--output-truncate", "true",
    ]  # fmt: skip
    started = time.monotonic()
    env = {**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, check=False)
    elapsed = time.monotonic() - started
    tail = done.stdout[-6000:] + done.stderr[-2000:]
    print(f"schemathesis: exit {done.returncode} in {elapsed:.0f} s\n{tail[-1500:]}")
    assert done.returncode == 0, tail
    assert "500 Internal Server Error" not in done.stdout
    events = [json.loads(line) for path in report.glob("*.ndjson") for line in path.read_text().splitlines() if line]
    assert events, "schemathesis wrote no report"


def test_flops_token_create_list_revoke_against_the_manager(manager: Manager) -> None:
    env = {"FLOPS_MANAGER_URL": manager.url, "FLOPS_TOKEN": manager.admin_token}
    created = run_flops("token", "create", "carol", env=env, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr
    token = created.stdout.strip().splitlines()[-1]
    token_id = created.stdout.split()[1]
    listed = run_flops("token", "list", env=env, timeout=120)
    assert token_id in listed.stdout and "carol" in listed.stdout and token not in listed.stdout
    carol = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{manager.url}/api/flops/projects", headers=carol, timeout=30).status_code == 200
    revoked = run_flops("token", "revoke", token_id, env=env, timeout=120)
    assert revoked.returncode == 0 and f"revoked {token_id}" in revoked.stdout, revoked.stdout + revoked.stderr
    assert requests.get(f"{manager.url}/api/flops/projects", headers=carol, timeout=30).status_code == 401
    as_carol = run_flops("token", "list", env={**env, "FLOPS_TOKEN": token}, timeout=120)
    assert as_carol.returncode == 1 and "error:" in as_carol.stdout
