"""The one error of the OCI target."""


class OciBuildError(RuntimeError):
    """An image could not be built, pushed or looked up; the message says why."""
