"""What a failed Flower reply says, for people: the reason without Flower's wrapping."""

import re

from flwr.app import Message

# Flower wraps an exception of a ClientApp as "<class 'module.Type'>:<'message'>".
_FLOWER_REASON = re.compile(r"^<class '[^']*'>:<'(?P<message>.*)'>$", re.DOTALL)


def reply_error(message: Message) -> str:
    """The user-facing reason of a failed reply (Flower wraps it in type and quotes)."""
    reason = (message.error.reason if message.has_error() else None) or "no reply"
    match = _FLOWER_REASON.match(reason)
    return str(match.group("message")) if match else reason
