"""In-memory :class:`core.types.StateView` s for offline replays and examples.

:class:`MemoryStates` keeps plain state objects (exact); :class:`CodecStates`
keeps them as the worker's codec bytes, so that a replay measures what
storage precision costs.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.types import UserState
from state.codec import Precision, decode_state, encode_state

__all__ = ["MemoryStates", "CodecStates"]


class MemoryStates:
    """A dict-backed :class:`core.types.StateView` for offline replay.

    ``get_many`` hands out copies (the view's ownership contract), so a step
    that fails half way leaves ``states`` as it was.
    """

    def __init__(self) -> None:
        self.states: dict[str, UserState] = {}

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        return {u: self.states[u].copy() for u in user_ids if u in self.states}

    def put(self, user_id: str, state: UserState) -> None:
        self.states[user_id] = state

    def drop(self, user_id: str) -> None:
        self.states.pop(user_id, None)


class CodecStates:
    """A :class:`core.types.StateView` that keeps states as the worker's codec bytes.

    Every state goes through :func:`state.codec.encode_state` when put and is
    decoded when read, as in the worker's store, so an evaluation measures
    what storage precision (``float16`` or ``float32`` vectors) costs.
    """

    def __init__(self, precision: Precision = "float16") -> None:
        self.precision: Precision = precision
        self.raw: dict[str, bytes] = {}

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        return {u: decode_state(self.raw[u]) for u in user_ids if u in self.raw}

    def put(self, user_id: str, state: UserState) -> None:
        self.raw[user_id] = encode_state(state, self.precision)

    def drop(self, user_id: str) -> None:
        self.raw.pop(user_id, None)
