"""`flops-manager`: the REST API, the MQTT event listener and the reconcile loop in one service."""

import logging
import os
import signal
import threading
from types import FrameType

from flops.client import admin_token_file
from flops.config import ensure_private_home
from flops.events import all_projects_filter
from flops.mqtt import EventSubscriber
from flops_manager.api import create_app
from flops_manager.auth import TokenService
from flops_manager.controller import Controller
from flops_manager.http_server import make_server
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
    ensure_private_home(settings.home)  # 0700, a looser mode tightened: user code sees it only through binds
    store = open_store(settings.mongo_uri, settings.home / "store")
    tokens = TokenService(store, identity_provider(settings.orchestration))
    token_file = admin_token_file(settings.home)
    token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    revealed = tokens.ensure_admin_token(settings.admin_token, settings.admin_token_file, token_file)
    if revealed:
        # Never the token itself: this output is manager.log.
        print(f"flops-manager: admin token created; it is in {token_file} (readable by this user only)", flush=True)
    controller = Controller(store, build_orchestrators(settings.orchestration, settings.runs_dir, store), settings)

    stop = threading.Event()
    loop = threading.Thread(target=controller.run, args=(stop,), name="reconcile", daemon=True)
    loop.start()
    # Decoded against its topic (a forged envelope is refused and logged), then recorded.
    subscriber = EventSubscriber(settings.mqtt, MANAGER_CLIENT_ID, all_projects_filter(), controller.receive)

    def shutdown(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        subscriber.close()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, shutdown)
    app = create_app(controller, tokens)
    print(f"flops-manager: listening on http://{settings.host}:{settings.port}", flush=True)
    make_server(app, settings.host, settings.port, settings.limits).run()


if __name__ == "__main__":
    main()
