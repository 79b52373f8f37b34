"""Errors of the data layer shared by its modules."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not on this machine; the message says how to get it."""
