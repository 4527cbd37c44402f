"""Error types shared by the model, the store and the CLI."""


class HeddleError(Exception):
    """Base of every error heddle reports to a user. Its message is meant to be shown as is."""


class InvalidRecord(HeddleError):
    """A value (user input or a record read from etcd) failed validation."""


class Conflict(HeddleError):
    """The write would break a uniqueness rule (name, VNI, address) or a precondition."""


class NotFound(HeddleError):
    """The record asked for does not exist."""


class Exhausted(HeddleError):
    """A pool (addresses, VNIs) has no free entry left."""


class StoreUnavailable(HeddleError):
    """The store (etcd) could not be reached or did not answer in time."""


class StoreRefused(StoreUnavailable):
    """etcd answered and refused: this identity may not do that (permission denied, unknown
    user). Retrying with the same identity cannot help. A subclass of ``StoreUnavailable`` so
    that every loop that already survives an unreachable etcd (membership, status writer,
    watcher) survives a refusal the same way; callers that can report it say so."""


def clip(text: str, limit: int = 120) -> str:
    """``text`` cut to about ``limit`` characters, saying how long the whole was. Pure."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def brief(value: object, limit: int = 64) -> str:
    """``repr(value)`` cut to about ``limit`` characters (``clip``).

    Every message that quotes a value read from etcd or a request goes through this: a hostile
    megabyte string must not be copied into logs, status records or replies. Pure; never raises.
    """
    try:
        text = repr(value)
    except Exception:  # a repr that fails (or recurses) must not turn a report into a crash
        return f"<unprintable {type(value).__name__}>"
    return clip(text, limit)
