"""Errors that hybridc reports to users: each says what was wrong, where, and what to do."""

from __future__ import annotations


class HybridcError(Exception):
    """Base class of every error meant for the user (the CLI prints the message, no traceback)."""


class ModelLoadError(HybridcError):
    """MODEL could not be resolved to an nn.Module and an example input."""


class TraceError(HybridcError):
    """Neither torch.fx nor torch.export could capture the model's graph."""


class PartitionError(HybridcError):
    """The graph cannot be partitioned with the requested policies."""


class PlanMismatchError(HybridcError):
    """A plan does not describe the model it is applied to."""


class UnsupportedOpError(HybridcError):
    """An operation cannot be lowered to the requested target."""


class EquilibriumDivergedError(HybridcError):
    """A relaxation produced NaN/Inf or grew without bound."""


class DataError(HybridcError):
    """A dataset is missing, corrupt, or in an unexpected format."""
