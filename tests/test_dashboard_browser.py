"""The dashboard in a real headless browser, following a real project through a real manager.

A customer signs in through the login form and watches its project: the list shows it, the
round chart gains points as rounds finish (no reload), the learner on shuffled labels (node-3 of
four) is flagged and no other, the logs can be searched, the page links MLflow. Another customer
cannot open the page; a second project is cancelled with the page's button.

Set FLOPS_DASHBOARD_SCREENSHOT=docs/dashboard.png to refresh the README's screenshot.
"""

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from aggregator.tracking import PROJECT_TAG
from tests.browser import CHROMEDRIVER, CHROMIUM, NO_BROWSER, chromium, wait_for
from tests.conftest import EXAMPLES
from tests.manager_process import Manager, make_git_repo, sla

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("no_leftover_processes"),
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=NO_BROWSER),
]
LEARNERS = 4
ROUNDS = 3


def customer_token(manager: Manager, customer: str) -> str:
    answer = manager.call("POST", "/api/flops/tokens", json={"customer_id": customer})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["token"])


def submit(manager: Manager, repo: Path, customer: str) -> str:
    """A project of `customer`'s (the admin submits it for the customer: the repository is a local folder)."""
    document = sla(repo, rounds=ROUNDS, customerID=customer)
    document["training_configuration"].update(
        min_available_clients=LEARNERS, min_fit_clients=LEARNERS, min_evaluate_clients=LEARNERS
    )
    answer = manager.call("POST", "/api/flops/projects", json=document)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["project_id"])


def sign_in(driver: Any, manager: Manager, token: str, shots: Path) -> None:
    driver.delete_all_cookies()
    driver.get(manager.url + "/ui/login")
    driver.find_element("id", "token").send_keys(token)
    driver.find_element("css selector", "#login-form button[type=submit]").click()
    wait_for(driver, lambda d: d.current_url.endswith("/ui/projects"), "the projects list after login", shots)


LIVE_STATE = """
const live = document.getElementById("live");
const text = (id) => (document.getElementById(id) || {}).textContent || "";
return {
  status: live ? live.dataset.status : "",
  learners: [...document.querySelectorAll("tr.learner")].map((row) => (
    {name: row.dataset.learner, flagged: row.dataset.flagged === "true", text: row.textContent})),
  steps: [...document.querySelectorAll("#timeline li")].map((step) => step.className),
  experiment: (document.getElementById("mlflow-experiment") || {}).href || "",
  model: text("model-name"),
};
"""


def live(driver: Any) -> dict[str, Any]:
    """The live part of the project page, read at one instant (htmx replaces it every 2 s)."""
    return dict(driver.execute_script(LIVE_STATE))


def attribute(driver: Any, element_id: str, name: str) -> str:
    return str(driver.find_element("id", element_id).get_attribute(name) or "")


def test_a_customer_follows_its_project_on_the_dashboard(mlflow_server: str, tmp_path: Path) -> None:
    manager = Manager(tmp_path / "home", mlflow_server)
    shots = tmp_path / "timeout.png"
    try:
        manager.add_mock_nodes(customer="clinic", partitions=LEARNERS)
        for part in (manager.home / "nodes" / "node-3" / "digits").glob("*.parquet"):
            frame = pd.read_parquet(part)
            frame["label"] = np.random.default_rng(3).permutation(frame["label"].to_numpy())
            frame.to_parquet(part)
        clinic, rival = customer_token(manager, "clinic"), customer_token(manager, "rival")
        repo = make_git_repo(EXAMPLES / "digits-sklearn", tmp_path / "repos" / "digits-sklearn")
        project_id = submit(manager, repo, "clinic")

        with chromium(tmp_path / "profile") as driver:
            sign_in(driver, manager, clinic, shots)
            link = wait_for(
                driver, lambda d: d.find_elements("css selector", f'tr[data-project="{project_id}"] a'),
                "the project in the list", shots,
            )  # fmt: skip
            link[0].click()
            wait_for(driver, lambda d: d.find_elements("id", "round-chart"), "the project page", shots)
            driver.execute_script("window.flopsSamePage = true;")

            # The chart gains its points while the page stays open, one round after the other.
            seen: list[int] = []
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline and (not seen or seen[-1] < ROUNDS):
                points = int(attribute(driver, "round-chart", "data-rounds") or 0)
                if not seen or points != seen[-1]:
                    seen.append(points)
                assert live(driver)["status"] not in ("failed", "cancelled"), manager.log()
                time.sleep(0.25)
            assert seen[-1] == ROUNDS and len([n for n in seen if n > 0]) >= 2, seen
            assert seen == sorted(seen), seen
            assert driver.execute_script("return window.flopsSamePage === true;"), "the page was reloaded"

            learners = wait_for(
                driver, lambda d: any(row["flagged"] for row in live(d)["learners"]) and live(d)["learners"],
                "a flagged learner", shots,
            )  # fmt: skip
            assert sorted(row["name"] for row in learners) == [f"node-{n}" for n in range(1, LEARNERS + 1)]
            [flagged] = [row for row in learners if row["flagged"]]
            assert flagged["name"] == "node-3" and ("local_loss" in flagged["text"] or "global_loss" in flagged["text"])
            assert attribute(driver, "learner-chart", "data-flagged") == "node-3"
            assert attribute(driver, "learner-chart", "data-learners") == str(LEARNERS)

            done = wait_for(
                driver, lambda d: live(d)["status"] == "completed" and live(d), "the project completed", shots,
                timeout=300,
            )  # fmt: skip
            assert "/#/experiments/" in done["experiment"] and "version 1" in done["model"]
            assert done["steps"] == ["step step-done"] * 4
            driver.set_window_size(1400, 2300)  # the whole page: tables and charts
            time.sleep(1.0)  # the charts follow the window's size
            driver.save_screenshot(str(tmp_path / "project.png"))
            if os.environ.get("FLOPS_DASHBOARD_SCREENSHOT"):
                shutil.copy(tmp_path / "project.png", os.environ["FLOPS_DASHBOARD_SCREENSHOT"])

            driver.execute_script("document.getElementById('log-component').value = 'aggregator';")
            driver.find_element("id", "log-search").send_keys("OUTLIER")  # the search ignores case
            driver.find_element("css selector", "#log-form button[type=submit]").click()
            summary = wait_for(
                driver, lambda d: "contain" in d.find_element("id", "log-summary").text and d.find_element(
                    "id", "log-summary").text, "searched logs", shots,
            )  # fmt: skip
            matched = int(summary.split(" of ")[0])
            shown = driver.find_element("id", "log-lines").text.splitlines()
            assert matched == len(shown) > 0 and all("outlier node-3: " in line for line in shown), summary

            # Another customer: neither the page nor the project in its list.
            sign_in(driver, manager, rival, shots)
            assert project_id not in driver.find_element("id", "projects").text
            driver.get(f"{manager.url}/ui/projects/{project_id}")
            assert f"no project {project_id}" in driver.find_element("id", "error-message").text

            # Cancel from the page: the project stops, and the page says so without a reload.
            sign_in(driver, manager, clinic, shots)
            second = submit(manager, repo, "clinic")
            driver.get(f"{manager.url}/ui/projects/{second}")
            wait_for(driver, lambda d: d.find_elements("id", "cancel"), "the cancel button", shots)[0].click()
            wait_for(driver, lambda d: live(d)["status"] == "cancelled", "the project cancelled", shots, timeout=120)
        assert manager.wait_for(second, ("cancelled",), timeout=60)["status"] == "cancelled"

        # The same learner is named in the API and in MLflow, from the round it joined in.
        view = manager.call("GET", f"/api/flops/projects/{project_id}/learners").json()
        assert {entry["learner"] for entry in view["flagged"]} == {"node-3"}
        assert 1 in {entry["round"] for entry in view["flagged"]}
        experiment_id = manager.call("GET", f"/api/flops/projects/{project_id}").json()["tracking"]["experiment_id"]
        mine = f"attributes.run_name = 'round-1' and tags.`{PROJECT_TAG}` = '{project_id}'"
        [first] = MlflowClient(mlflow_server).search_runs([experiment_id], mine)
        assert first.data.metrics["learner.node-3.flagged"] == 1.0 and first.data.tags["flops.outliers"].startswith(
            "node-3: "
        )
    finally:
        manager.stop()
