"""Typed errors. Each message is one line that names the object and the problem."""


class CosfailError(Exception):
    """Base of every error cosfail reports to an operator."""


class DomainFileError(CosfailError):
    """domain.toml is missing, unreadable or invalid."""


class UnknownNodeError(CosfailError):
    """A node name that the domain does not declare."""


class DesignationError(CosfailError):
    """A master designation file or last-running record is malformed."""


class SnapshotError(CosfailError):
    """A snapshot is missing, corrupt, truncated or foreign; it is never restored."""


class DriverError(CosfailError):
    """The COSprint service of a node could not be driven as asked."""


class StaleEpochError(CosfailError):
    """A step or a node acts under an epoch older than the domain's."""
