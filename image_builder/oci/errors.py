"""The one error of the OCI target."""


class OciBuildError(RuntimeError):
    """An image could not be built, pushed or looked up; the message says why."""

    transient = False


class RegistryUnavailable(OciBuildError):
    """The registry cannot be reached, answers 5xx or is too slow: the build may succeed later."""

    transient = True
