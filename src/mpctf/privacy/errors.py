"""Errors of the privacy stages; all are :class:`~mpctf.errors.FederationError` (the round cannot finish)."""

from __future__ import annotations

from mpctf.errors import FederationError


class SecureAggregationError(FederationError):
    """The secure-aggregation protocol cannot go on (too few parties, a malformed or inconsistent message)."""


class IntegrityError(SecureAggregationError):
    """A ciphertext or a revealed secret failed its authenticity check: something was tampered with."""
