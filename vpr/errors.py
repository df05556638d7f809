"""Errors a user can act on: each names the file, folder or value at fault."""


class SpikebotError(Exception):
    """Base class for errors reported to the user without a traceback."""


class DatasetError(SpikebotError):
    """A dataset, traverse, image or ground-truth file is missing, unreadable or inconsistent."""


class FetchError(SpikebotError):
    """A dataset could not be downloaded."""
