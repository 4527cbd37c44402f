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
