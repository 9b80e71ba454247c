"""How a state document is encoded for storage: pure functions, no I/O.

The stored form is the JSON envelope ``{"format": "tokensdk.state", "version": 1,
"state": <document>}`` in UTF-8, with an optional ``"serial"``: a number that grows
with every write of a store shared by several processes (a compare-and-set version;
readers that do not know it ignore it). Decoding tells apart a document it cannot read
(:class:`CorruptState`) from one written by a newer tokensdk (:class:`NewerFormat`),
which must be left alone. Exceptions never carry any of the content.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from tokensdk._errors import InvalidInput

__all__ = [
    "FORMAT",
    "VERSION",
    "CorruptState",
    "NewerFormat",
    "decode_envelope",
    "decode_state",
    "encode_state",
    "with_serial",
]

FORMAT = "tokensdk.state"
VERSION = 1


class CorruptState(ValueError):
    """The data is not a readable tokensdk state envelope.

    Attributes:
        reason: What is wrong, in words that never quote the content.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NewerFormat(ValueError):
    """The envelope was written by a newer tokensdk (its format version is unknown).

    Attributes:
        version: The envelope's format version.
    """

    def __init__(self, version: int) -> None:
        super().__init__(f"format version {version}")
        self.version = version


def _to_json(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("non-finite number")
    return number


def _reject_constant(name: str) -> object:
    raise ValueError("non-finite number")


# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(
    default=_to_json, ensure_ascii=False, allow_nan=False, separators=(",", ":")
)


def with_serial(encoded: bytes, serial: int) -> bytes:
    """Return an envelope from :func:`encode_state` with its ``serial`` set.

    The envelope is encoded once, before a shared store learns the serial under its
    lock; this appends the field without encoding the document again.

    Args:
        encoded: What :func:`encode_state` returned (without a serial).
        serial: The write's serial number (a natural number).
    """
    if type(serial) is not int or serial < 0 or not encoded.endswith(b"}\n"):
        raise InvalidInput("with_serial takes encode_state's output and a natural number")
    return encoded[:-2] + b',"serial":%d}\n' % serial


def encode_state(document: Mapping[str, Any], serial: int | None = None) -> bytes:
    """Encode a state document into its stored envelope.

    Args:
        document: A JSON-able mapping (nested mappings, lists, str, int, finite float,
            bool, None).
        serial: The write's serial number, for stores shared by several processes.

    Returns:
        The UTF-8 JSON envelope, newline-terminated.

    Raises:
        InvalidInput: The document is not a mapping or not JSON-serialisable.
    """
    if not isinstance(document, Mapping):
        raise InvalidInput(f"a state document must be a mapping, not {type(document).__name__}")
    envelope: dict[str, Any] = {"format": FORMAT, "version": VERSION, "state": document}
    if serial is not None:
        envelope["serial"] = serial
    try:
        return (_ENCODER.encode(envelope) + "\n").encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        # The chained error names a type at most, never a value.
        raise InvalidInput("the state document is not JSON-serialisable") from exc


def decode_state(data: bytes | str) -> dict[str, Any]:
    """Decode a stored envelope back into the state document.

    The same as ``decode_envelope(data)[0]``.

    Args:
        data: The stored bytes (UTF-8) or text.

    Returns:
        The state document.

    Raises:
        CorruptState: The data is empty, not UTF-8, not JSON, or not a version-1
            tokensdk state envelope whose ``state`` is an object.
        NewerFormat: The envelope's version is newer than this tokensdk understands.
    """
    return decode_envelope(data)[0]


def decode_envelope(data: bytes | str) -> tuple[dict[str, Any], int]:
    """Decode a stored envelope into the state document and its serial (0 if none).

    Raises:
        CorruptState: As :func:`decode_state`, or a serial that is not a natural number.
        NewerFormat: As :func:`decode_state`.
    """
    if isinstance(data, bytes):
        if not data.strip():
            raise CorruptState("empty")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptState("not valid UTF-8") from None
    else:
        text = data
        if not text.strip():
            raise CorruptState("empty")
    try:
        envelope = json.loads(text, parse_float=_finite_float, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise CorruptState("not valid JSON (truncated?)") from None
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise CorruptState("not a tokensdk state envelope")
    version = envelope.get("version")
    if type(version) is not int or version < 1:
        raise CorruptState("invalid format version")
    if version > VERSION:
        raise NewerFormat(version)
    state = envelope.get("state")
    if not isinstance(state, dict):
        raise CorruptState("the state is not a JSON object")
    serial = envelope.get("serial", 0)
    if type(serial) is not int or serial < 0:
        raise CorruptState("invalid serial")
    return state, serial
