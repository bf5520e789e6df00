"""`flops-aggregator`: a SuperLink, one submitted run, followed to its end.

It exits 0 only when the training completed. The SuperLink runs in this process's own
process group, so whoever stops the aggregator's group stops Flower's processes with it.

Secure by default: the SuperLink serves TLS with the project's certificate, admits only
SuperNodes whose public keys this aggregator registered (`--supernode-keys`, before the run is
submitted), answers Control API calls only with this aggregator's token (`aggregator.superlink`)
and Runtime API calls only from the SuperExec this aggregator starts with a shared secret.
`--insecure` (plain HTTP, no SuperNode authentication) is an explicit opt-in for experiments
on loopback and is refused on any other address.

Hierarchical FL: with `--cluster NAME --root-superlink HOST:PORT` this is the aggregator of one
cluster. Its SuperLink is its learners' as above, and it joins the root's SuperLink as a SuperNode
(`flops-learner` with no data, its own key `--root-key` and the project's CA), whose ClientApp
(`aggregator.cluster_client`) runs every message of the root as a run of this SuperLink. It
serves until it is stopped: whoever started it stops it once the root's training ended.
"""

import argparse
import contextlib
import importlib
import io
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from aggregator.cluster_context import CLUSTER_CONTEXT_ENV, CONTEXT_FILE, ClusterContext
from aggregator.control import ControlAPI
from aggregator.environment import MLFLOW_TRACKING_URI_ENV, STATE_DIR_ENV, TRACKING_URI_ENV, mlflow_fallback_uri
from flops.actors import learner_command
from flops.app_bundle import build_app_dir
from flops.flower_runtime import new_secret_file, superexec_command
from flops.learner_records import flagged
from flops.ml_repo.contract import ContractError, validate_repository
from flops.net import free_port, is_loopback, wait_until
from flops.pki import SuperNodeCredentials
from flops.processes import ManagedProcess
from flops.progress import PROGRESS_FILE, ProgressFollower, read_summary
from flops.training import RoundReport, TrainingSpec, TrainingSummary

CONNECTION = "flops"
STATUS_CHECK_INTERVAL_S = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flops-aggregator", description=__doc__)
    spec = parser.add_mutually_exclusive_group(required=True)
    spec.add_argument("--spec", type=Path, help="training spec (JSON file)")
    spec.add_argument("--spec-json", help="training spec (JSON text), for workers without shared files")
    parser.add_argument("--repo", required=True, type=Path, help="the ML repository's folder")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1", help="SuperLink bind address")
    parser.add_argument("--port", type=int, default=0, help="SuperLink port (0: a free one)")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking server; empty: none")
    parser.add_argument("--ssl-certfile", type=Path, help="the SuperLink's TLS certificate (PEM)")
    parser.add_argument("--ssl-keyfile", type=Path, help="its private key (PEM)")
    parser.add_argument("--ssl-ca-certfile", type=Path, help="the project's CA certificate (PEM)")
    parser.add_argument(
        "--supernode-keys", type=Path, help="folder of the learners' public keys (<name>.pub, OpenSSH) to admit"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="opt-in for loopback experiments: plain HTTP and any SuperNode admitted; refused on other addresses",
    )
    parser.add_argument("--timeout", type=float, default=24 * 3600, help="overall limit in seconds")
    cluster = parser.add_argument_group("hierarchical FL: the aggregator of one cluster")
    cluster.add_argument("--cluster", default="", help="this cluster's name: serve it instead of running a training")
    cluster.add_argument("--root-superlink", default="", help="the root aggregator's SuperLink HOST:PORT")
    cluster.add_argument("--root-certificates", type=Path, help="the project's CA, for the root's SuperLink")
    cluster.add_argument("--root-key", type=Path, help="this cluster's SuperNode key at the root (P-384, OpenSSH)")
    return parser.parse_args(argv)


def check_cluster(args: argparse.Namespace) -> str | None:
    """What is wrong with the cluster options; None when there are none or they are complete."""
    if not args.cluster:
        if args.root_superlink or args.root_certificates or args.root_key:
            return "--root-superlink, --root-certificates and --root-key need --cluster NAME"
        return None
    if not args.root_superlink:
        return f"the aggregator of cluster {args.cluster} needs --root-superlink HOST:PORT"
    if args.insecure:
        if args.root_certificates or args.root_key:
            return "--insecure cannot be combined with --root-certificates or --root-key"
        return None
    if not args.root_certificates or not args.root_key:
        return f"the aggregator of cluster {args.cluster} needs --root-certificates and --root-key (or --insecure)"
    return None


def check_security(args: argparse.Namespace) -> str | None:
    """What is wrong with the TLS / SuperNode-authentication options; None when they are complete."""
    tls = (args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certfile)
    if args.insecure:
        if any(tls) or args.supernode_keys:
            return "--insecure cannot be combined with TLS files or --supernode-keys"
        if not is_loopback(args.host):
            return (
                f"--insecure is only for experiments on loopback, not on {args.host}: "
                "give the project's certificate (--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile) and --supernode-keys"
            )
        return None
    if not all(tls):
        return "give --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile (or --insecure for a loopback experiment)"
    if args.supernode_keys is None:
        return "give --supernode-keys: the folder of the learners' public keys this SuperLink admits"
    for path in (*tls, args.supernode_keys):
        if not path.exists():
            return f"{path} does not exist"
    if not list(args.supernode_keys.glob("*.pub")):
        return f"{args.supernode_keys} holds no <name>.pub: no learner could join"
    return None


def write_flower_config(home: Path, address: str, ca_file: Path | None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    security = f'root-certificates = "{ca_file.resolve()}"' if ca_file else "insecure = true"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{security}\n',
        encoding="utf-8",
    )


def superlink_command(
    args: argparse.Namespace, port: int, control_token_file: Path, superexec_secret_file: Path
) -> list[str]:
    """Flower's SuperLink behind the control-token guard, in process isolation with our SuperExec.

    Its state is Flower's in-memory one: every start begins afresh anyway (`main` admits only the
    SuperNodes it registers), and an SQLite file locked up under 50 SuperNodes on one machine
    ("database is locked", answered with 500s).
    """
    command = [
        sys.executable, "-m", "aggregator.superlink",
        "--control-token-file", str(control_token_file),
        "--host", args.host,
        "--port", str(port),
        "--disable-runtime-dependency-installation",
        "--isolation", "process",
        "--superexec-auth-secret-file", str(superexec_secret_file),
    ]  # fmt: skip
    if args.insecure:
        return [*command, "--insecure"]
    return [
        *command,
        "--ssl-certfile", str(args.ssl_certfile),
        "--ssl-keyfile", str(args.ssl_keyfile),
        "--ssl-ca-certfile", str(args.ssl_ca_certfile),
        "--enable-supernode-auth",
    ]  # fmt: skip


def submit(app_dir: Path, control: ControlAPI) -> int:
    """`flwr run APP flops` in this process (the CLI's own code, without a second interpreter)."""
    from flwr.cli.run.run import run as flwr_run

    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), control.for_flwr_cli():
            flwr_run(
                app=str(app_dir), superlink=CONNECTION, federation=None, run_config_overrides=None,
                federation_config_overrides=None, stream=False, output_format="default",
            )  # fmt: skip
    except (SystemExit, Exception) as error:  # click and typer exit with exceptions
        raise RuntimeError(f"flwr run failed: {output.getvalue().strip()} {error}") from error
    started = re.search(r"Successfully started run (\d+)", output.getvalue())
    if started is None:
        raise RuntimeError(f"flwr run failed: {output.getvalue().strip()}")
    return int(started.group(1))


def preload_flower_cli() -> None:
    """Import Flower's CLI while the SuperLink starts: both take seconds, in parallel."""
    threading.Thread(target=importlib.import_module, args=("flwr.cli.run.run",), daemon=True).start()


def superlink_gone(superlink: ManagedProcess) -> Callable[[], str | None]:
    """Why the SuperLink process is gone, or None while it runs."""

    def gone() -> str | None:
        if superlink.running():
            return None
        return f"SuperLink exited with code {superlink.returncode()}:\n{superlink.log_tail()}"

    return gone


def round_lines(report: RoundReport) -> list[str]:
    """What the aggregator's log says of a finished round: its figures and each flagged learner."""
    figures = f"accuracy {report.accuracy:.4g}" if report.accuracy is not None else "no accuracy"
    if report.loss is not None:
        figures += f", loss {report.loss:.4g}"
    lines = [f"round {report.round}: {figures}, {report.learners} learners, {report.duration_s:.1f} s"]
    lines += [f"round {report.round}: outlier {learner}: {'; '.join(why)}" for learner, why in
              flagged(report.per_learner).items()]  # fmt: skip
    lines += [f"round {report.round}: failure: {failure}" for failure in report.failures]
    return lines


def follow(
    control: ControlAPI, run_id: int, state_dir: Path, gone: Callable[[], str | None], timeout: float
) -> TrainingSummary | str:
    """Wait for the ServerApp's summary in `state_dir`, or return the reason there will be none
    (`gone()`: why the SuperLink cannot finish the run any more, None while it can)."""
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + STATUS_CHECK_INTERVAL_S
    progress = ProgressFollower(state_dir / PROGRESS_FILE)
    while time.monotonic() < deadline:
        for event in progress.new_events():
            if event.kind == "round" and event.round is not None:
                for line in round_lines(event.round):
                    print(f"flops-aggregator: {line}", flush=True)
        summary = read_summary(state_dir)
        if summary is not None:
            return summary
        reason = gone()
        if reason is not None:
            return reason
        if time.monotonic() >= next_check:
            status = control.run_status(run_id)
            if status and status.startswith("finished"):
                time.sleep(1.0)  # the summary is written just before the run ends
                return read_summary(state_dir) or f"run {run_id} ended ({status}) without a summary"
            next_check = time.monotonic() + STATUS_CHECK_INTERVAL_S
        time.sleep(0.5)
    return f"training did not finish within {timeout:.0f} s"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    problem = check_security(args) or check_cluster(args)
    if problem:
        raise SystemExit(f"flops-aggregator: {problem}")
    spec = TrainingSpec.model_validate_json(args.spec_json or args.spec.read_text(encoding="utf-8"))
    if args.cluster and spec.hierarchy is None:
        raise SystemExit(f"flops-aggregator: cluster {args.cluster} needs a hierarchical training spec")
    try:
        if spec.statistics is None:  # a statistics job runs no user code
            validate_repository(args.repo)
    except ContractError as error:
        raise SystemExit(f"flops-aggregator: {error}") from error
    state_dir: Path = args.state_dir.resolve()
    args.state_dir = state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    # A fresh SuperLink state: only the SuperNodes registered below are admitted, no earlier start's.
    for stale in ("summary.json", "progress.jsonl", "superlink.db", "superlink.db-wal", "superlink.db-shm"):
        (state_dir / stale).unlink(missing_ok=True)
    app_dir = None if args.cluster else build_app_dir(args.repo, state_dir / "app", spec)
    port = args.port or free_port(args.host)
    connect_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    home = state_dir / "flwr-home"
    write_flower_config(home, f"{connect_host}:{port}", args.ssl_ca_certfile)
    # Secrets of this SuperLink alone, made afresh for every start (files, never argv or env).
    control = ControlAPI(
        f"{connect_host}:{port}", args.ssl_ca_certfile, new_secret_file(state_dir / "secrets" / "control-token")
    )
    superexec_secret = new_secret_file(state_dir / "secrets" / "superexec-secret")
    env = {
        "FLWR_HOME": str(home),
        STATE_DIR_ENV: str(state_dir),
        TRACKING_URI_ENV: args.tracking_uri,
        MLFLOW_TRACKING_URI_ENV: mlflow_fallback_uri(args.tracking_uri, state_dir),
    }
    os.environ["FLWR_HOME"] = str(home)
    preload_flower_cli()
    superlink = ManagedProcess(
        "superlink",
        superlink_command(args, port, control.token_file, superexec_secret),
        state_dir / "superlink.log",
        env=env,
        own_group=False,
    )
    helpers: list[ManagedProcess] = []  # the SuperExec; a cluster's SuperNode at the root

    def stop_flower() -> None:
        for process in reversed(helpers):
            process.stop()
        superlink.stop()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_flower()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    outcome: TrainingSummary | str
    try:
        if not wait_until(lambda: superlink.listens_on(port) or not superlink.running(), 60):
            raise RuntimeError(f"SuperLink did not open its port {port} within 60 s:\n{superlink.log_tail()}")
        if not superlink.running():
            raise RuntimeError(f"SuperLink failed to start:\n{superlink.log_tail()}")
        # The ServerApp's processes come from this SuperExec, with the SuperLink's environment.
        helpers.append(
            ManagedProcess(
                "superexec",
                superexec_command(f"{connect_host}:{port}", args.ssl_ca_certfile, superexec_secret, superlink.pid),
                state_dir / "superexec.log",
                env=env,
                own_group=False,
            )
        )
        mode = "TLS, registered SuperNodes only" if not args.insecure else "PLAIN HTTP (--insecure), any SuperNode"
        role = f"cluster {args.cluster}: " if args.cluster else ""
        print(f"flops-aggregator: {role}SuperLink listening on {args.host}:{port} ({mode})", flush=True)
        if args.supernode_keys is not None:
            try:
                admitted = control.register_supernodes(args.supernode_keys)
            except Exception as error:  # Flower's client raises its own error types
                raise RuntimeError(f"could not register the learners' keys with the SuperLink: {error}") from error
            print(f"flops-aggregator: admitted SuperNodes {', '.join(admitted)}", flush=True)
        if args.cluster:
            raise SystemExit(serve_cluster(args, spec, control, superlink, helpers))
        assert app_dir is not None
        run_id = submit(app_dir, control)
        print(f"flops-aggregator: submitted run {run_id}", flush=True)
        outcome = follow(control, run_id, state_dir, superlink_gone(superlink), args.timeout)
    except RuntimeError as error:
        if args.cluster:
            print(f"flops-aggregator: cluster {args.cluster}: {error}", flush=True)
            stop_flower()
            raise SystemExit(1) from error
        outcome = str(error)
    finally:
        stop_flower()
    if isinstance(outcome, str):
        outcome = TrainingSummary(status="failed", project_id=spec.project_id, error=outcome)
        (state_dir / "summary.json").write_text(outcome.model_dump_json(indent=2), encoding="utf-8")
    print(outcome.model_dump_json(), flush=True)
    raise SystemExit(0 if outcome.status == "completed" else 1)


def serve_cluster(
    args: argparse.Namespace,
    spec: TrainingSpec,
    control: ControlAPI,
    superlink: ManagedProcess,
    helpers: list[ManagedProcess],
) -> int:
    """Join the root as this cluster's SuperNode and serve until it, or this SuperLink, ends; the exit code.

    The SuperNode is a learner without data: `flops-learner` of this environment, whose ClientApp
    (the root's app) finds this SuperLink through the context file its environment names.
    """
    state_dir: Path = args.state_dir
    context = ClusterContext(
        cluster=args.cluster,
        superlink=control.address,
        ca_file=control.ca_file,
        control_token_file=control.token_file,
        repo=args.repo.resolve(),
        state_dir=state_dir,
        flwr_home=Path(os.environ["FLWR_HOME"]),
    )
    context_file = state_dir / CONTEXT_FILE
    context_file.write_text(context.model_dump_json(indent=2), encoding="utf-8")
    no_data = state_dir / "no-data"
    no_data.mkdir(exist_ok=True)
    identity = None
    if not args.insecure:
        identity = SuperNodeCredentials(
            folder=args.root_key.parent,
            ca_cert=args.root_certificates,
            private_key=args.root_key,
            public_key=args.root_key,
        )
    command = learner_command(
        args.root_superlink, no_data, [], args.cluster, python=sys.executable, identity=identity, insecure=args.insecure
    )
    supernode = ManagedProcess(
        "root-supernode", command, state_dir / "root-supernode.log", env={CLUSTER_CONTEXT_ENV: str(context_file)},
        own_group=False,
    )  # fmt: skip
    helpers.append(supernode)
    print(f"flops-aggregator: cluster {args.cluster} joining the root at {args.root_superlink}", flush=True)
    while supernode.running() and superlink.running():
        time.sleep(0.5)
    if not superlink.running():
        print(f"flops-aggregator: cluster {args.cluster}: SuperLink exited:\n{superlink.log_tail()}", flush=True)
        return 1
    code = supernode.returncode() or 0
    print(f"flops-aggregator: cluster {args.cluster}: its SuperNode at the root ended ({code})", flush=True)
    return code


if __name__ == "__main__":
    main()
