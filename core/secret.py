"""`Secret`: a string that never shows itself."""

from __future__ import annotations


class Secret:
    """A string that never shows itself in `repr`, `str` or logs.

    Call `reveal()` at the one place the real value is needed (an HTTP header,
    an HMAC). Everything else sees ``'***'``.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
