"""The `oakestra` backend: FL actors as Oakestra microservices, through the system manager's REST API.

One module a concept: `settings` (how to reach and log in, from FLOPS_OAKESTRA_*), `client`
(HTTP: login, token renewal, the API's quirks, transient versus permanent errors), `payload`
(SLA v2.0 documents, names, placement, status mapping) and `backend` (`OakestraOrchestrator`).

The system manager has quirks the client absorbs (see docs/oakestra.md): JSON answers encoded
twice, POST routes that answer 308 without their trailing slash, failures reported with HTTP 200
in `failed_services`, a single-application GET with an empty body (the per-user list is used
instead), Mongo ids as `{"$oid": ...}`, and 10-minute access tokens renewed with a refresh token.
"""

from flops_manager.orchestration.oakestra.backend import OakestraOrchestrator
from flops_manager.orchestration.oakestra.client import (
    MISSING,
    OakestraAPIError,
    OakestraClient,
    decode_body,
    error_message,
    is_transient_status,
    mongo_id,
)
from flops_manager.orchestration.oakestra.payload import (
    FAILED_STATUSES,
    NEGATIVE_STATUSES,
    PENDING_STATUSES,
    SLA_VERSION,
    OakestraApp,
    OakestraServiceSpec,
    application_description,
    application_name,
    application_namespace,
    map_status,
    placement_constraints,
)
from flops_manager.orchestration.oakestra.settings import OakestraConfigError, OakestraSettings

__all__ = [
    "FAILED_STATUSES",
    "MISSING",
    "NEGATIVE_STATUSES",
    "PENDING_STATUSES",
    "SLA_VERSION",
    "OakestraAPIError",
    "OakestraApp",
    "OakestraClient",
    "OakestraConfigError",
    "OakestraOrchestrator",
    "OakestraServiceSpec",
    "OakestraSettings",
    "application_description",
    "application_name",
    "application_namespace",
    "decode_body",
    "error_message",
    "is_transient_status",
    "map_status",
    "mongo_id",
    "placement_constraints",
]
