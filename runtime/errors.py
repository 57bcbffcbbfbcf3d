"""Errors raised for bad input. Each names what is wrong; none leaves an engine in a broken state."""


class EdgeInferError(Exception):
    """Base class for every error edgeinfer raises on purpose."""


class BundleError(EdgeInferError):
    """A model bundle is missing, corrupt, or does not match its manifest."""


class InputError(EdgeInferError, ValueError):
    """A caller passed an argument that cannot be used (wrong type, empty, too long, out of range)."""
