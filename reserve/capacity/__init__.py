"""Capacity features that run after the deploy: adjacency modes, their per-venue flag, and the confirm client.

- ``reserve.capacity.adjacency``: the three adjacency modes as validators;
- ``reserve.capacity.flags``: ``allocator.adjacency_mode`` per venue (and other flags) in feature_flag_overrides;
- ``reserve.capacity.confirm``: ``confirm_hold``, the client of confirm_hold_assignment_tx.
"""

from __future__ import annotations

from reserve.capacity.adjacency import MODES, UnknownMode, satisfies
from reserve.capacity.confirm import (
    AdjacencyRejected,
    BookingNotFound,
    Confirmation,
    ConfirmError,
    HoldBelongsToAnotherBooking,
    HoldExpired,
    HoldHasNoTables,
    HoldNotFound,
    IdempotencyConflict,
    InvalidRequest,
    OverlapRejected,
    PolicyChanged,
    TablesHeldElsewhere,
    TenantMismatch,
    confirm_hold,
)
from reserve.capacity.flags import FlagError, UnknownRestaurant

__all__ = [
    "MODES", "AdjacencyRejected", "BookingNotFound", "ConfirmError", "Confirmation", "FlagError",
    "HoldBelongsToAnotherBooking", "HoldExpired", "HoldHasNoTables", "HoldNotFound", "IdempotencyConflict",
    "InvalidRequest", "OverlapRejected", "PolicyChanged", "TablesHeldElsewhere", "TenantMismatch", "UnknownMode",
    "UnknownRestaurant", "confirm_hold", "satisfies",
]
