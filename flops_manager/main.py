"""`flops-manager`: the REST API, the MQTT event listener and the reconcile loop in one service."""

import logging
import os
import signal
import threading
from types import FrameType

from waitress import serve

from flops.client import admin_token_file
from flops.events import EventSchemaError, all_projects_filter, decode_event
from flops.mqtt import EventSubscriber
from flops_manager.api import create_app
from flops_manager.auth import TokenService
from flops_manager.controller import Controller
from flops_manager.orchestration import OrchestratorError, build_orchestrators
from flops_manager.orchestration.settings import identity_provider
from flops_manager.settings import ManagerSettings
from flops_manager.store import open_store

MANAGER_CLIENT_ID = "flops-manager"
log = logging.getLogger("flops.manager")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = ManagerSettings.from_env(os.environ)
    except OrchestratorError as error:
        raise SystemExit(f"flops-manager: {error}") from error
    settings.home.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.mongo_uri, settings.home / "store")
    tokens = TokenService(store, identity_provider(settings.orchestration))
    token_file = admin_token_file(settings.home)
    token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    revealed = tokens.ensure_admin_token(settings.admin_token, settings.admin_token_file, token_file)
    if revealed:
        print(f"flops-manager: admin token created (shown once, also in {token_file}): {revealed}", flush=True)
    controller = Controller(store, build_orchestrators(settings.orchestration, settings.runs_dir, store), settings)

    def on_message(topic: str, body: bytes) -> None:
        try:
            controller.handle_event(decode_event(topic, body))
        except EventSchemaError as error:
            log.warning("dropped event: %s", error)
        except Exception:
            log.exception("handling %s failed", topic)

    stop = threading.Event()
    loop = threading.Thread(target=controller.run, args=(stop,), name="reconcile", daemon=True)
    loop.start()
    subscriber = EventSubscriber(settings.mqtt, MANAGER_CLIENT_ID, all_projects_filter(), on_message)

    def shutdown(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        subscriber.close()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, shutdown)
    app = create_app(controller, tokens)
    print(f"flops-manager: listening on http://{settings.host}:{settings.port}", flush=True)
    serve(app, host=settings.host, port=settings.port, threads=8, ident="flops-manager")


if __name__ == "__main__":
    main()
