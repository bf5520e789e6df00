"""`flops-learner`: check the node's data, then become a Flower SuperNode.

The check runs before Flower starts so that a node without data for the project's tags
fails at once with a message that says so, instead of failing every round later.
"""

import argparse
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from pydantic import BaseModel

from flops.data.node_data import missing_tags
from flops.events import Component, EventName, LearnerReport, make_event
from flops.mqtt import MqttSettings, publish_once
from flops.net import free_port
from flops.runtime_env import process_env
from learner.client_app import DATA_DIR_KEY, DATA_TAGS_KEY, NODE_NAME_KEY


class LearnerSettings(BaseModel):
    """What the manager tells a learner through its environment: the project and the broker."""

    project_id: str | None = None
    mqtt: MqttSettings | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "LearnerSettings":
        return cls(project_id=env.get("FLOPS_PROJECT_ID") or None, mqtt=MqttSettings.from_env(env))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flops-learner", description=__doc__)
    parser.add_argument("--superlink", required=True, help="aggregator address HOST:PORT")
    parser.add_argument("--data-dir", required=True, type=Path, help="this node's data folder")
    parser.add_argument("--data-tags", default="", help="comma-separated data tags to require")
    parser.add_argument("--node-name", default=os.uname().nodename)
    parser.add_argument("--host", default="127.0.0.1", help="host of the SuperNode's own API")
    parser.add_argument("--port", type=int, default=0, help="SuperNode API port (0: a free one)")
    parser.add_argument("--root-certificates", type=Path, help="CA file for TLS to the SuperLink")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the SuperLink")
    return parser.parse_args(argv)


def supernode_command(args: argparse.Namespace) -> list[str]:
    binary = shutil.which("flower-supernode", path=str(Path(sys.executable).parent)) or "flower-supernode"
    node_config = (
        f'{NODE_NAME_KEY}="{args.node_name}" '
        f'{DATA_DIR_KEY}="{args.data_dir.resolve()}" '
        f'{DATA_TAGS_KEY}="{args.data_tags}"'
    )
    command = [
        binary,
        "--superlink",
        args.superlink,
        "--host",
        args.host,
        "--port",
        str(args.port or free_port(args.host)),
        "--node-config",
        node_config,
    ]
    if args.root_certificates:
        command += ["--root-certificates", str(args.root_certificates)]
    elif args.insecure:
        command.append("--insecure")
    else:
        raise SystemExit("flops-learner: give --root-certificates CA.pem for TLS, or --insecure for plain HTTP")
    return command


def report(settings: LearnerSettings, node_name: str, event: EventName, error: str | None = None) -> None:
    """Tell the manager, when there is one (a project id and a broker)."""
    if settings.project_id is None or settings.mqtt is None:
        return
    message = make_event(settings.project_id, Component.LEARNER, event, LearnerReport(node=node_name), error)
    try:
        publish_once(message, settings.mqtt)
    except OSError as failure:
        print(f"flops-learner: could not publish {event.value}: {failure}", flush=True)


def fail(settings: LearnerSettings, node_name: str, message: str) -> NoReturn:
    report(settings, node_name, EventName.FAILED, message)
    raise SystemExit(f"flops-learner {node_name}: {message}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = LearnerSettings.from_env(os.environ)
    tags = [tag for tag in args.data_tags.split(",") if tag]
    if not args.data_dir.is_dir():
        fail(settings, args.node_name, f"data directory {args.data_dir} does not exist")
    absent = missing_tags(args.data_dir, tags)
    if absent:
        fail(
            settings,
            args.node_name,
            f"no data for tag(s) {', '.join(absent)} in {args.data_dir}; "
            "partition data there with `flops data partition` first",
        )
    command = supernode_command(args)
    report(settings, args.node_name, EventName.JOINED)
    print(f"flops-learner {args.node_name}: joining {args.superlink} (python {sys.executable})", flush=True)
    os.execve(command[0], command, process_env())


if __name__ == "__main__":
    main()
