"""The Oakestra backend against the system-manager stand-in: the exact requests, the quirks, the failures.

Oakestra itself cannot run here; `tests/oakestra_standin.py` implements the documented API
(/work/shared/reference/oakestra.md) and records every request, so these tests pin down what the
backend sends and how it reads each answer. The last tests run real processes through the
stand-in (`run_locally=True`).
"""

import ipaddress
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import SecretStr

from flops.net import wait_until
from flops.pki import ProjectPKI
from flops_manager.orchestration.addresses import AddressAllocator, AddressError
from flops_manager.orchestration.base import OrchestratorError, ServiceSpec, ServiceStatus, TransientOrchestratorError
from flops_manager.orchestration.oakestra import (
    NEGATIVE_STATUSES,
    OakestraAPIError,
    OakestraConfigError,
    OakestraOrchestrator,
    OakestraServiceSpec,
    OakestraSettings,
    application_name,
    application_namespace,
    decode_body,
    is_transient_status,
    map_status,
    mongo_id,
)
from flops_manager.store import ProjectStore, open_store
from tests.oakestra_standin import OakestraStandin, validate_sla

USER, PASSWORD = "flops", "stand-in-secret"


@pytest.fixture
def standin() -> Iterator[OakestraStandin]:
    with OakestraStandin(username=USER, password=PASSWORD) as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ProjectStore]:
    opened = open_store(None, tmp_path / "db")
    yield opened
    opened.close()


def orchestrator(standin: OakestraStandin, store: ProjectStore, **settings: Any) -> OakestraOrchestrator:
    return orchestrator_at(standin.url, store, **settings)


def orchestrator_at(url: str, store: ProjectStore, **settings: Any) -> OakestraOrchestrator:
    values: dict[str, Any] = {"url": url, "username": USER, "password": PASSWORD, **settings}
    return OakestraOrchestrator(OakestraSettings(**values), AddressAllocator.from_store(store))


def spec(name: str = "aggregator", role: str = "aggregator", project: str = "proj-1", **fields: Any) -> ServiceSpec:
    values: dict[str, Any] = {
        "project_id": project,
        "name": name,
        "role": role,
        "command": ["flops-aggregator", "--port", "9092"],
        "image": "registry.example:5073/flops/aggregator:abc123",
        **fields,
    }
    return ServiceSpec(**values)


def service_slas(standin: OakestraStandin) -> list[Any]:
    """The SLAs sent to `POST /api/service/`, in order."""
    return [r.body for r in standin.requests if r.method == "POST" and r.path == "/api/service/"]


def poll_until_finished(backend: OakestraOrchestrator, handle: Any, limit: int = 30) -> list[Any]:
    states = []
    for _ in range(limit):
        state = backend.status(handle)
        states.append(state)
        if state.finished:
            break
    return states


# -- settings ----------------------------------------------------------------------------------


def test_settings_need_credentials_and_have_no_defaults() -> None:
    with pytest.raises(OakestraConfigError) as error:
        OakestraSettings.from_env({"FLOPS_OAKESTRA_URL": "https://oak.example:10000", "FLOPS_OAKESTRA_USERNAME": "u"})
    assert "FLOPS_OAKESTRA_PASSWORD or FLOPS_OAKESTRA_PASSWORD_FILE" in str(error.value)
    with pytest.raises(OakestraConfigError) as error:
        OakestraSettings.from_env({})
    message = str(error.value)
    assert "FLOPS_OAKESTRA_URL" in message and "FLOPS_OAKESTRA_USERNAME" in message and "no defaults" in message


def test_settings_from_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    settings = OakestraSettings.from_env(
        {
            "FLOPS_OAKESTRA_URL": "https://oak.example:10000/",
            "FLOPS_OAKESTRA_USERNAME": "u",
            "FLOPS_OAKESTRA_PASSWORD_FILE": str(secret),
            "FLOPS_OAKESTRA_ORGANIZATION": "edge",
            "FLOPS_OAKESTRA_PLACEMENT": '{"node-1": "cluster1/worker2"}',
        }
    )
    assert settings.password.get_secret_value() == "s3cret"
    assert settings.url == "https://oak.example:10000"
    assert settings.organization == "edge" and settings.placement == {"node-1": "cluster1/worker2"}
    assert "s3cret" not in repr(settings)
    with pytest.raises(OakestraConfigError, match="only one"):
        OakestraSettings.from_env(
            {
                "FLOPS_OAKESTRA_URL": "https://oak.example",
                "FLOPS_OAKESTRA_USERNAME": "u",
                "FLOPS_OAKESTRA_PASSWORD": "x",
                "FLOPS_OAKESTRA_PASSWORD_FILE": str(secret),
            }
        )


def test_tls_verification_is_on_by_default(tmp_path: Path) -> None:
    base = {"FLOPS_OAKESTRA_USERNAME": "u", "FLOPS_OAKESTRA_PASSWORD": "p"}
    assert OakestraSettings.from_env({**base, "FLOPS_OAKESTRA_URL": "https://oak.example"}).verify is True
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    with_ca = OakestraSettings.from_env(
        {**base, "FLOPS_OAKESTRA_URL": "https://oak.example", "FLOPS_OAKESTRA_CA_FILE": str(ca)}
    )
    assert with_ca.verify == str(ca)
    with pytest.raises(OakestraConfigError, match="FLOPS_OAKESTRA_CA_FILE"):
        OakestraSettings.from_env({**base, "FLOPS_OAKESTRA_URL": "https://oak.example", "FLOPS_OAKESTRA_INSECURE": "1"})
    with pytest.raises(OakestraConfigError, match="clear text"):
        OakestraSettings.from_env({**base, "FLOPS_OAKESTRA_URL": "http://10.0.0.5:10000"})
    with pytest.raises(OakestraConfigError, match="is not a file"):
        OakestraSettings.from_env(
            {**base, "FLOPS_OAKESTRA_URL": "https://oak.example", "FLOPS_OAKESTRA_CA_FILE": str(tmp_path / "none")}
        )
    local = OakestraSettings.from_env(
        {**base, "FLOPS_OAKESTRA_URL": "https://127.0.0.1:1", "FLOPS_OAKESTRA_INSECURE": "1"}
    )
    assert local.verify is False


@pytest.mark.filterwarnings("ignore:Unverified HTTPS request")
def test_https_is_verified_and_a_ca_file_is_used(tmp_path: Path, store: ProjectStore) -> None:
    link = ProjectPKI(tmp_path / "pki", "oakestra-standin").superlink(["127.0.0.1"], [])  # a server pair and its CA
    with OakestraStandin(username=USER, password=PASSWORD, tls=(str(link.cert), str(link.key))) as server:
        assert server.url.startswith("https://")
        with pytest.raises(OrchestratorError, match=r"TLS verification .* FLOPS_OAKESTRA_CA_FILE"):
            orchestrator(server, store).deploy(spec())
        assert not server.requests  # the password never reached an unverified server
        handle = orchestrator(server, store, ca_file=link.ca_cert).deploy(spec())
        assert handle.ref.count("/") == 1
        assert orchestrator(server, store, insecure=True).status(handle).status is ServiceStatus.RUNNING


# -- the requests sent ---------------------------------------------------------------------------


def test_deploy_sends_the_documented_requests(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    handle = backend.deploy(
        spec(env={"FLOPS_PROJECT_ID": "proj-1"}, ports={"superlink": 9092}, memory_mb=512, vcpus=1.5)
    )

    calls = [(r.method, r.path) for r in standin.requests]
    app_id, service_id = handle.ref.split("/")
    user_id = standin.users[USER]["_id"]
    assert calls == [
        ("POST", "/api/auth/login"),
        ("GET", f"/api/user/{USER}"),
        ("GET", f"/api/applications/{user_id}"),
        ("POST", "/api/application/"),
        ("GET", f"/api/services/{app_id}"),
        ("POST", "/api/service/"),
        ("POST", f"/api/service/{service_id}/instance"),
    ]
    assert standin.requests[0].body == {"username": USER, "password": PASSWORD}
    assert all(r.bearer for r in standin.requests[1:])

    create_app = standin.requests[3].body
    assert validate_sla(create_app) == []
    application = create_app["applications"][0]
    assert application["application_name"] == application_name("proj-1")
    assert application["application_namespace"] == application_namespace("proj-1", 0)
    assert len(application["application_name"]) <= 10 and len(application["application_namespace"]) <= 10
    assert application["microservices"] == [] and application["applicationID"] == ""

    add_service = standin.requests[5].body
    assert validate_sla(add_service) == []
    assert add_service["sla_version"] == "v2.0" and add_service["customerID"] == USER
    assert add_service["applications"][0]["applicationID"] == app_id
    service = add_service["applications"][0]["microservices"][0]
    assert service == {
        "microserviceID": "",
        "microservice_name": "aggregator",
        "microservice_namespace": "aggregator",
        "virtualization": "container",
        "code": "registry.example:5073/flops/aggregator:abc123",
        "cmd": ["flops-aggregator", "--port", "9092"],
        "environment": ["FLOPS_PROJECT_ID=proj-1"],
        "memory": 512,
        "vcpus": 2,
        "vgpus": 0,
        "storage": 0,
        "one_shot": False,
        "addresses": {"rr_ip": handle.address},
        "port": "9092",
    }
    assert handle.backend == "oakestra" and handle.name == "aggregator"
    assert ipaddress.ip_address(handle.address or "") in ipaddress.ip_network("10.30.0.0/16")
    assert standin.services[service_id].doc["RR_ip"] == handle.address


def test_learners_get_the_aggregator_address_and_placement(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store, placement={"node-2": "cluster2/worker7"})
    aggregator = backend.deploy(spec())
    learners = [
        backend.deploy(
            spec(
                name=f"learner-{node}", role="learner", node=node,
                command=["flops-learner", "--superlink", f"{aggregator.address}:9092"],
                env={"FLOPS_AGGREGATOR_ADDRESS": str(aggregator.address)},
            )
        )
        for node in ("cluster1", "node-2", "cluster1,cluster3")
    ]  # fmt: skip
    bodies = service_slas(standin)
    services = [body["applications"][0]["microservices"][0] for body in bodies]
    assert all(validate_sla(body) == [] for body in bodies)
    # one application for the whole project
    assert len({body["applications"][0]["applicationID"] for body in bodies}) == 1
    assert len(standin.calls("POST", "/api/application/")) == 1
    learner_services = services[1:]
    assert [s["cmd"][-1] for s in learner_services] == [f"{aggregator.address}:9092"] * 3
    assert all(f"FLOPS_AGGREGATOR_ADDRESS={aggregator.address}" in s["environment"] for s in learner_services)
    assert learner_services[0]["constraints"] == [{"type": "clusters", "allowed": ["cluster1"]}]
    assert learner_services[1]["constraints"] == [{"type": "direct", "cluster": "cluster2", "node": "worker7"}]
    assert learner_services[2]["constraints"] == [{"type": "clusters", "allowed": ["cluster1", "cluster3"]}]
    names = [s["microservice_name"] for s in services]
    assert len(set(names)) == len(names) and all(len(name) <= 10 and name.isalnum() for name in names)
    addresses = [aggregator.address, *(h.address for h in learners)]
    assert len(set(addresses)) == len(addresses)


def test_hints_instances_and_addons(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    hinted = OakestraServiceSpec(
        project_id="proj-1", name="learner", role="learner", command=["x"], image="img:1",
        instances=3, clusters=["edge"], addons=["flops-data"], vgpus=1, one_shot=True,
    )  # fmt: skip
    handle = backend.deploy(hinted)
    service_id = handle.ref.split("/")[1]
    assert len(standin.calls("POST", f"/api/service/{service_id}/instance")) == 3
    body = service_slas(standin)[-1]
    service = body["applications"][0]["microservices"][0]
    assert service["constraints"] == [
        {"type": "clusters", "allowed": ["edge"]},
        {"type": "addons", "needs": ["flops-data"]},
    ]
    assert service["vgpus"] == 1 and service["one_shot"] is True
    assert len(standin.services[service_id].instances) == 3


def test_a_service_without_an_image_is_refused_before_anything_is_created(
    standin: OakestraStandin, store: ProjectStore
) -> None:
    with pytest.raises(OrchestratorError, match="container images"):
        orchestrator(standin, store).deploy(spec(image=None))
    assert not standin.requests
    with pytest.raises(OrchestratorError, match="FLOPS_OAKESTRA_VOLUME_CSI_DRIVER"):
        orchestrator(standin, store).deploy(spec(read_only_mounts={"/data": "/data"}))
    assert not standin.requests


def test_credential_folders_become_csi_volumes_of_the_configured_driver(
    standin: OakestraStandin, store: ProjectStore
) -> None:
    """Oakestra has no bind mounts: each read-only mount is one SLA volume of the operator's CSI driver."""
    backend = orchestrator(
        standin, store, volume_csi_driver="nfs.csi.k8s.io",
        volume_config={"server": "manager.example", "share": "/export{source}", "read_only": "true"},
    )  # fmt: skip
    pki = "/srv/flops/projects/proj-1/pki/supernodes/node-1"
    backend.deploy(spec(name="learner-node-1", role="learner", read_only_mounts={pki: pki}))
    service = service_slas(standin)[-1]["applications"][0]["microservices"][0]
    assert service["volumes"] == [
        {
            "volume_id": service["volumes"][0]["volume_id"],
            "csi_driver": "nfs.csi.k8s.io",
            "mount_path": pki,
            "config": {"server": "manager.example", "share": f"/export{pki}", "read_only": "true"},
        }
    ]
    assert re.fullmatch(r"flops[0-9a-f]{16}", service["volumes"][0]["volume_id"])
    assert not any(pki in item for item in service["environment"])  # files, never variables


def test_a_reserved_address_is_the_one_the_service_gets(standin: OakestraStandin, store: ProjectStore) -> None:
    """The deploy stage puts the aggregator's rr_ip in its TLS certificate before the service exists."""
    backend = orchestrator(standin, store)
    reserved = backend.reserve_address("proj-1", "aggregator")
    assert backend.reserve_address("proj-1", "aggregator") == reserved  # stable until deployed
    handle = backend.deploy(spec())
    assert handle.address == reserved
    assert service_slas(standin)[-1]["applications"][0]["microservices"][0]["addresses"]["rr_ip"] == reserved
    assert backend.reserve_address("proj-1", "aggregator") != reserved  # a later deployment: a new one


# -- authentication --------------------------------------------------------------------------------


def test_wrong_password_is_a_clear_error(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = OakestraOrchestrator(
        OakestraSettings(url=standin.url, username=USER, password=SecretStr("wrong")),
        AddressAllocator.from_store(store),
    )
    with pytest.raises(OrchestratorError, match=r"login as 'flops' failed .*invalid username or password") as error:
        backend.deploy(spec())
    assert not error.value.transient  # retrying with the same password cannot help


def test_organization_is_sent_at_login(standin: OakestraStandin, store: ProjectStore) -> None:
    orchestrator(standin, store, organization="root").deploy(spec())
    assert standin.requests[0].body == {"username": USER, "password": PASSWORD, "organization_name": "root"}
    with pytest.raises(OrchestratorError, match="Found no organization"):
        orchestrator(standin, store, organization="elsewhere").deploy(spec())


def test_token_is_refreshed_before_it_expires(store: ProjectStore) -> None:
    with OakestraStandin(username=USER, password=PASSWORD, token_lifetime_s=3.0) as server:
        backend = orchestrator(server, store, refresh_margin_s=2.0)
        handle = backend.deploy(spec())
        assert not server.calls("POST", "/api/auth/refresh")
        first_token = server.requests[1].bearer
        time.sleep(1.2)  # less than 2 s left: renewed before the next call
        backend.status(handle)
        refreshes = server.calls("POST", "/api/auth/refresh")
        assert len(refreshes) == 1
        assert server.tokens[refreshes[0].bearer or ""].kind == "refresh"  # the refresh token as bearer
        assert len(server.calls("POST", "/api/auth/login")) == 1
        last = server.requests[-1]
        assert last.path.startswith("/api/service/") and last.bearer != first_token
        assert server.tokens[last.bearer or ""].kind == "access"


def test_a_401_renews_the_token_and_retries_once(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store, refresh_margin_s=0)
    handle = backend.deploy(spec())
    standin.expire_access_tokens()
    assert backend.status(handle).status is ServiceStatus.RUNNING
    tail = [(r.method, r.path) for r in standin.requests[-3:]]
    service_id = handle.ref.split("/")[1]
    assert tail == [
        ("GET", f"/api/service/{service_id}"),
        ("POST", "/api/auth/refresh"),
        ("GET", f"/api/service/{service_id}"),
    ]
    # refresh refused too (expired refresh token): log in again
    standin.expire_access_tokens()
    standin.revoke_refresh_tokens()
    assert backend.status(handle).status is ServiceStatus.RUNNING
    tail = [(r.method, r.path) for r in standin.requests[-4:]]
    assert tail == [
        ("GET", f"/api/service/{service_id}"),
        ("POST", "/api/auth/refresh"),
        ("POST", "/api/auth/login"),
        ("GET", f"/api/service/{service_id}"),
    ]


# -- quirks ----------------------------------------------------------------------------------------


def test_double_encoded_json_and_mongo_ids() -> None:
    inner = [{"_id": {"$oid": "65f0c0ffee"}, "application_name": "fl1"}]
    assert decode_body(json.dumps(json.dumps(inner))) == inner
    assert decode_body(json.dumps(inner)) == inner
    assert decode_body("") is None and decode_body("  ") is None
    assert decode_body('"not json inside"') == "not json inside"
    assert mongo_id({"$oid": "abc"}) == "abc" and mongo_id("abc") == "abc" and mongo_id(None) == ""


def test_application_ids_given_only_as_mongo_oid(store: ProjectStore) -> None:
    with OakestraStandin(username=USER, password=PASSWORD, app_id_field=False) as server:
        handle = orchestrator(server, store).deploy(spec())
        app_id = handle.ref.split("/")[0]
        assert app_id in server.apps


def test_a_post_without_its_slash_is_redirected_once(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    sla = {
        "sla_version": "v2.0",
        "customerID": USER,
        "applications": [
            {"applicationID": "", "application_name": "manual", "application_namespace": "test",
             "application_desc": "", "microservices": []}
        ],
    }  # fmt: skip
    apps = backend.client.request("POST", "/api/application", sla)
    assert [app["application_name"] for app in apps] == ["manual"]
    posts = [(r.path, r.body) for r in standin.calls("POST", "/api/application")]
    assert posts == [("/api/application", sla), ("/api/application/", sla)]


def test_http_200_with_failed_services_is_an_error(standin: OakestraStandin, store: ProjectStore) -> None:
    standin.fail_services["aggregator"] = "net plugin unreachable"
    backend = orchestrator(standin, store)
    with pytest.raises(OrchestratorError, match=r"refused service aggregator .*aggregator: net plugin unreachable"):
        backend.deploy(spec())
    assert not standin.services and not standin.calls("POST", "/api/service/x")
    # its address was recorded as released, never handed out again
    docs = list(store._db["addresses"].find({}))
    assert len(docs) == 1 and docs[0]["released_at"] is not None


def test_the_empty_single_application_get_is_never_relied_on(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    handle = backend.deploy(spec())
    app_id = handle.ref.split("/")[0]
    assert backend.client.request("GET", f"/api/application/{app_id}") is None  # the quirk
    standin.requests.clear()
    other = orchestrator(standin, store)  # a restarted manager finds the app through the list
    assert other.application("proj-1") is not None
    assert other.application("proj-1").app_id == app_id  # type: ignore[union-attr]
    assert not [r for r in standin.requests if r.path.startswith("/api/application/")]


def test_a_taken_application_name_moves_to_another_namespace(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    name = application_name("proj-1")
    # another project's application already holds the first name + namespace
    backend.client.request(
        "POST", "/api/application/",
        {"sla_version": "v2.0", "customerID": USER, "applications": [
            {"applicationID": "", "application_name": name, "application_namespace": application_namespace("proj-1", 0),
             "application_desc": "someone else", "microservices": []}]},
    )  # fmt: skip
    handle = backend.deploy(spec())
    app = standin.apps[handle.ref.split("/")[0]]
    assert (app["application_name"], app["application_namespace"]) == (name, application_namespace("proj-1", 1))
    assert app["application_desc"] == "FLOps project proj-1"
    # once the other application is gone, a restarted manager still finds ours (by name and description)
    other = next(app_id for app_id, doc in standin.apps.items() if doc["application_desc"] == "someone else")
    backend.client.request("DELETE", f"/api/application/{other}")
    again = orchestrator(standin, store).application("proj-1")
    assert again is not None and again.app_id == handle.ref.split("/")[0]


def test_a_409_race_reuses_the_application_created_meanwhile(
    standin: OakestraStandin, store: ProjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = orchestrator(standin, store)
    first.deploy(spec())
    second = orchestrator(standin, store)
    real_list = second._list_apps
    listings: list[list[Any]] = [[]]  # the first listing misses the application, as if it was created just after

    def stale_then_real() -> list[Any]:
        return listings.pop() if listings else real_list()

    monkeypatch.setattr(second, "_list_apps", stale_then_real)
    handle = second.deploy(spec(name="learner-1", role="learner"))
    assert len(standin.apps) == 1 and handle.ref.split("/")[0] in standin.apps
    assert [r.path for r in standin.calls("POST", "/api/application/")] == ["/api/application/"] * 2


def test_invalid_sla_is_refused_with_oakestras_message(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    app = backend.application("proj-1", create=True)
    assert app is not None
    bad_service = {
        "microservice_name": "bad-name",
        "microservice_namespace": "x",
        "virtualization": "container",
        "code": "img",
        "vcpus": 1.5,
        "addresses": {"rr_ip": "10.31.0.1"},
    }
    application = {
        "applicationID": app.app_id,
        "application_name": app.name,
        "application_namespace": app.namespace,
        "microservices": [bad_service],
    }
    bad = {"sla_version": "v2.0", "customerID": USER, "applications": [application]}
    with pytest.raises(OrchestratorError) as error:
        backend.client.request("POST", "/api/service/", bad)
    message = str(error.value)
    assert "HTTP 422" in message and "microservice_name" in message and "rr_ip" in message and "vcpus" in message
    assert isinstance(error.value, OakestraAPIError) and error.value.status_code == 422
    assert not error.value.transient


def test_other_documented_answers(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    handle = backend.deploy(spec())
    service_id = handle.ref.split("/")[1]
    with pytest.raises(OrchestratorError, match="HTTP 501") as error:
        backend.client.request("PUT", f"/api/service/{service_id}", {})
    assert not error.value.transient  # "not implemented" does not change on a retry
    assert backend.client.request("POST", "/api/service/0123456789abcdef01234567/instance") == {"message": "ok"}
    assert backend.client.request("GET", "/api/clusters/active", auth=False)[0]["cluster_name"] == "cluster1"


# -- transient versus permanent errors ---------------------------------------------------------------


def test_http_statuses_are_classified() -> None:
    assert all(is_transient_status(code) for code in (408, 429, 500, 502, 503, 504, 507))
    assert not any(is_transient_status(code) for code in (400, 401, 403, 404, 409, 422, 501))


def test_a_system_manager_answering_503_is_transient(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    handle = backend.deploy(spec())
    standin.outage = (503, {"message": "upstream restarting"})
    with pytest.raises(TransientOrchestratorError, match=r"HTTP 503.*upstream restarting"):
        backend.status(handle)  # not "gone": the question went unanswered
    with pytest.raises(TransientOrchestratorError, match="HTTP 503"):
        backend.deploy(spec(name="learner-1", role="learner"))
    with pytest.raises(TransientOrchestratorError):
        backend.undeploy_project("proj-1")
    standin.outage = None  # back again: the same calls work
    assert backend.status(handle).status is ServiceStatus.RUNNING
    assert backend.deploy(spec(name="learner-1", role="learner")).address


def test_a_login_answered_500_is_transient(standin: OakestraStandin, store: ProjectStore) -> None:
    standin.outage = (500, {"message": "database not ready"})
    with pytest.raises(TransientOrchestratorError, match=r"login as 'flops' failed \(HTTP 500\): database not ready"):
        orchestrator(standin, store).deploy(spec())
    assert not store._db["addresses"].find_one({})  # nothing allocated for a deploy that never started


def test_a_stopped_system_manager_is_transient(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    handle = backend.deploy(spec())
    url = standin.url
    standin.stop()  # connection refused from now on
    with pytest.raises(TransientOrchestratorError, match=f"cannot reach Oakestra at {url}"):
        backend.status(handle)
    with pytest.raises(TransientOrchestratorError):
        backend.logs(handle)
    with pytest.raises(TransientOrchestratorError):
        backend.undeploy(handle)
    fresh = orchestrator_at(url, store)
    with pytest.raises(TransientOrchestratorError, match="cannot reach Oakestra"):
        fresh.deploy(spec(name="learner-1", role="learner"))


def test_a_system_manager_that_never_answers_times_out_as_transient(store: ProjectStore) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(TransientOrchestratorError, match="timed out"):
            orchestrator_at(url, store, timeout_s=0.5).deploy(spec())
        assert time.monotonic() - started < 10


# -- statuses --------------------------------------------------------------------------------------


def test_scheduling_moves_to_running(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    handle = backend.deploy(spec())
    details = [backend.status(handle) for _ in range(6)]
    assert all(state.status is ServiceStatus.RUNNING for state in details)
    assert [state.detail for state in details[:5]] == [
        "CLUSTER_SCHEDULED", "NODE_SCHEDULED", "CREATING", "RUNNING", "RUNNING",
    ]  # fmt: skip


def test_a_simulated_one_shot_completes(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    handle = backend.deploy(spec(name="builder", role="builder", one_shot=True))
    final = poll_until_finished(backend, handle)[-1]
    assert final.status is ServiceStatus.EXITED and final.exit_code == 0


@pytest.mark.parametrize("status", sorted(NEGATIVE_STATUSES))
def test_negative_scheduling_statuses_fail_with_oakestras_detail(
    standin: OakestraStandin, store: ProjectStore, status: str
) -> None:
    standin.outcomes["aggregator"] = (status, "no worker has 512 MB free")
    backend = orchestrator(standin, store)
    handle = backend.deploy(spec())
    final = poll_until_finished(backend, handle)[-1]
    assert final.status is ServiceStatus.FAILED
    assert status in final.detail and "no worker has 512 MB free" in final.detail


@pytest.mark.parametrize("status", ["FAILED", "DEAD"])
def test_failed_instances_fail_at_once(standin: OakestraStandin, store: ProjectStore, status: str) -> None:
    standin.outcomes["builder"] = (status, "image pull failed")
    backend = orchestrator(standin, store)
    handle = backend.deploy(spec(name="builder", role="builder", one_shot=True))
    states = poll_until_finished(backend, handle)
    assert states[-1].status is ServiceStatus.FAILED
    assert f"instance 0 {status}: image pull failed" in states[-1].detail
    # Oakestra would have rescheduled it: a later poll looks healthy again, so the first FAILED is what counts
    if status == "FAILED":
        assert backend.status(handle).status is ServiceStatus.RUNNING


def test_status_mapping_table() -> None:
    def state(*statuses: str, service: str = "RUNNING") -> Any:
        return map_status(
            {"status": service, "instance_list": [{"instance_number": i, "status": s} for i, s in enumerate(statuses)]}
        )

    for pending in ("REQUESTED", "CLUSTER_SCHEDULED", "NODE_SCHEDULED", "CREATING", "CREATED", "RUNNING"):
        assert state(pending).status is ServiceStatus.RUNNING
    assert state("COMPLETED", "COMPLETED").status is ServiceStatus.EXITED
    assert state("COMPLETED", "RUNNING").status is ServiceStatus.RUNNING
    assert state("RUNNING", "FAILED").status is ServiceStatus.FAILED
    assert state("UNDEPLOYED").status is ServiceStatus.GONE
    assert map_status({"status": "UNDEPLOYED", "instance_list": []}).status is ServiceStatus.GONE
    assert map_status({"status": "NO_WORKER_CAPACITY", "status_detail": "x"}).status is ServiceStatus.FAILED
    assert "unknown Oakestra status" in state("SOMETHING_NEW").detail


# -- removal ---------------------------------------------------------------------------------------


def test_undeploy_deletes_instances_then_the_service(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    handle = backend.deploy(OakestraServiceSpec(**spec().model_dump(), instances=2))
    service_id = handle.ref.split("/")[1]
    backend.undeploy(handle)
    deletes = [r.path for r in standin.calls("DELETE")]
    assert deletes == [
        f"/api/service/{service_id}/instance/0",
        f"/api/service/{service_id}/instance/1",
        f"/api/service/{service_id}",
    ]
    assert backend.status(handle).status is ServiceStatus.GONE
    assert backend.logs(handle) == ""
    backend.undeploy(handle)  # twice is fine


def test_undeploy_project_deletes_the_application(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    handles = [backend.deploy(spec()), backend.deploy(spec(name="learner-1", role="learner"))]
    assert backend.undeploy_project("proj-1") is True
    assert not standin.apps and not standin.services
    assert standin.calls("DELETE")[-1].path == f"/api/application/{handles[0].ref.split('/')[0]}"
    assert all(backend.status(h).status is ServiceStatus.GONE for h in handles)
    assert backend.undeploy_project("proj-1") is False


# -- addresses -------------------------------------------------------------------------------------


def test_rr_ips_are_unique_across_deployments_and_restarts(tmp_path: Path) -> None:
    seen: set[str] = set()
    for _ in range(3):  # three manager lifetimes on the same data directory
        store = open_store(None, tmp_path / "db")
        allocator = AddressAllocator.from_store(store)
        fresh = [allocator.allocate(f"p{n}/svc") for n in range(100)]
        assert len(set(fresh)) == len(fresh) and not seen.intersection(fresh)
        seen.update(fresh)
        store.close()
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.30.128.0/17") for ip in seen)
    assert all(ip.rsplit(".", 1)[1] not in ("0", "255") for ip in seen)


def test_rr_ips_survive_colliding_candidates_and_concurrency(store: ProjectStore) -> None:
    import random

    # two allocators drawing the very same candidates: the database's unique _id keeps them apart
    first = AddressAllocator(store._db["addresses"], lock=store._lock, rng=random.Random(7))
    second = AddressAllocator(store._db["addresses"], lock=store._lock, rng=random.Random(7))
    a = [first.allocate("a") for _ in range(20)]
    b = [second.allocate("b") for _ in range(20)]
    assert not set(a) & set(b)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.extend(first.allocate("t") for _ in range(25))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = a + b + results
    assert len(everything) == len(set(everything)) == 140
    assert first.owner(a[0]) == "a"


def test_a_small_pool_is_used_up_then_refused(store: ProjectStore) -> None:
    allocator = AddressAllocator(store._db["small"], lock=store._lock, pool="10.30.200.0/29")
    taken = {allocator.allocate("x") for _ in range(6)}
    assert taken == {f"10.30.200.{n}" for n in range(1, 7)}
    allocator.release("10.30.200.1")
    with pytest.raises(AddressError, match="exhausted"):
        allocator.allocate("x")
    with pytest.raises(AddressError, match="service network"):
        AddressAllocator(store._db["x"], pool="10.31.0.0/16")


def test_many_deployments_get_distinct_addresses(standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(standin, store)
    handles = [backend.deploy(spec(name=f"learner-{n}", role="learner", project=f"p{n % 3}")) for n in range(20)]
    addresses = [h.address for h in handles]
    assert len(set(addresses)) == 20
    sent = [body["applications"][0]["microservices"][0]["addresses"]["rr_ip"] for body in service_slas(standin)]
    assert sent == addresses
    assert len(standin.apps) == 3


# -- real processes through the stand-in -----------------------------------------------------------


@pytest.fixture
def local_standin() -> Iterator[OakestraStandin]:
    with OakestraStandin(username=USER, password=PASSWORD, run_locally=True) as server:
        yield server


def test_run_locally_one_shot_completes_with_its_logs(local_standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(local_standin, store)
    handle = backend.deploy(
        spec(name="hello", role="builder", one_shot=True, command=[sys.executable, "-c", "print('hi')"])
    )
    assert wait_until(lambda: backend.status(handle).finished, 20, 0.1)
    state = backend.status(handle)
    assert state.status is ServiceStatus.EXITED and state.exit_code == 0
    assert "hi" in backend.logs(handle).splitlines()


def test_run_locally_non_zero_exit_fails(local_standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(local_standin, store)
    handle = backend.deploy(
        spec(name="bad", role="builder", one_shot=True, command=[sys.executable, "-c", "print('oops'); exit(3)"])
    )
    states: list[Any] = []

    def finished() -> bool:
        states.append(backend.status(handle))
        return bool(states[-1].finished)

    assert wait_until(finished, 20, 0.1)
    assert states[-1].status is ServiceStatus.FAILED and "exit code 3" in states[-1].detail


def test_run_locally_long_running_then_undeployed(local_standin: OakestraStandin, store: ProjectStore) -> None:
    backend = orchestrator(local_standin, store)
    handle = backend.deploy(spec(name="sleeper", role="learner", command=["sleep", "60"]))
    for _ in range(5):
        assert backend.status(handle).status is ServiceStatus.RUNNING
    (process,) = local_standin.processes()
    pid = process.pid
    assert psutil.pid_exists(pid)
    backend.undeploy(handle)
    assert backend.status(handle).status is ServiceStatus.GONE
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not local_standin.processes()


def test_run_locally_rewrites_service_addresses_to_loopback(
    local_standin: OakestraStandin, store: ProjectStore
) -> None:
    backend = orchestrator(local_standin, store)
    aggregator = backend.deploy(spec(command=["sleep", "30"]))
    script = "import os, sys; print('env', os.environ['AGG']); print('arg', sys.argv[1])"
    learner = backend.deploy(
        spec(
            name="learner-1", role="learner", one_shot=True,
            command=[sys.executable, "-c", script, f"{aggregator.address}:9092"],
            env={"AGG": str(aggregator.address)},
        )
    )  # fmt: skip
    assert wait_until(lambda: backend.status(learner).finished, 20, 0.1)
    logs = backend.logs(learner)
    assert "env 127.0.0.1" in logs and "arg 127.0.0.1:9092" in logs
    assert backend.undeploy_project("proj-1")
    assert not local_standin.processes()
