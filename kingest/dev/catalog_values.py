"""Plausible scalar values for a field of any catalog, guided by its name, type and options.

A catalog's messages are unknown in advance, so the values of
:mod:`kingest.dev.catalog_synth` come from what a field says about itself: its name
(``*_tokens`` are small counts, ``cost_usd`` a small amount, ``latency`` milliseconds,
``*_percent`` 0 to 100, ``model`` one of a few model names), its Protobuf type (the range
an ``uint32`` can hold) and its kingest column options (``required``, the ``gte``/``lte``/
``lt`` bounds and ``max_length``, which the values always respect, so that the rows they
make are accepted rather than dead-lettered).

Everything is drawn from the caller's seeded :class:`random.Random`, so the same seed
gives the same values.
"""

from __future__ import annotations

import functools
import math
import random
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from google.protobuf.descriptor import FieldDescriptor

from kingest.options.v1 import options_pb2

__all__ = [
    "DEFAULT_MAX_TEXT_LENGTH",
    "WORDS",
    "CatalogSynthError",
    "ColumnRules",
    "bound_problems",
    "bytes_for",
    "column_rules",
    "is_free_text",
    "is_uuid_name",
    "map_keys",
    "number_for",
    "sentence",
    "short_id",
    "text_for",
    "truncated",
    "uuid4",
]

#: kingest's limit of a text column without ``max_length`` (options.proto).
DEFAULT_MAX_TEXT_LENGTH: Final = 1024

_INT32: Final = (-(2**31), 2**31 - 1)
_UINT32: Final = (0, 2**32 - 1)
_INT64: Final = (-(2**63), 2**63 - 1)
_UINT64: Final = (0, 2**64 - 1)
_FLOAT32_MAX: Final = 3.4028234663852886e38
_DOUBLE_MAX: Final = 1.7976931348623157e308

_INTEGER_RANGES: Final = {
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
}

# (name fragments, (low, high)): the first rule with a fragment in the field's name
# gives the range a number is drawn from (before the field's own bounds narrow it).
_NUMBER_HINTS: Final[tuple[tuple[tuple[str, ...], tuple[float, float]], ...]] = (
    (("percent", "utilization", "_pct", "rate"), (0.0, 100.0)),
    (("cost", "price", "usd", "eur", "amount"), (0.0001, 2.0)),
    (("_us", "micros"), (1_000.0, 2_000_000.0)),
    (("latency", "_ms", "millis"), (5.0, 5_000.0)),
    (("seconds", "duration"), (0.1, 3_600.0)),
    (("token",), (1.0, 4_000.0)),
    (("count", "turns", "num_", "total", "replicas"), (0.0, 50.0)),
    (("score", "probability", "confidence", "top_p", "ratio", "weight"), (0.0, 1.0)),
    (("bytes", "size"), (1_024.0, 10_000_000_000.0)),
    (("celsius",), (30.0, 90.0)),
    (("temperature",), (0.0, 2.0)),
    (("rating", "stars"), (1.0, 5.0)),
    (("seed",), (1.0, 2_147_483_647.0)),
    (("index", "rank", "step", "epoch", "position", "top_k", "attempt"), (0.0, 100.0)),
    (("port",), (1_024.0, 65_535.0)),
)
_DEFAULT_NUMBER_RANGE: Final = (0.0, 1_000.0)

_MODELS: Final = (
    "llama-3.1-70b-instruct",
    "llama-3.1-8b-instruct",
    "mistral-large-2",
    "qwen2.5-32b-instruct",
    "gpt-4o-mini",
    "claude-3-5-haiku",
)
_SOURCES: Final = (
    "gateway/eu-west-1",
    "gateway/us-east-1",
    "worker/gpu-node-07",
    "scheduler/main",
)
_ENVIRONMENTS: Final = ("prod", "staging", "canary", "dev")
WORDS: Final = (
    "alpha", "amber", "batch", "beacon", "cedar", "cobalt", "delta", "ember", "falcon",
    "garnet", "harbor", "indigo", "juniper", "kestrel", "lumen", "maple", "nimbus", "onyx",
    "pixel", "quartz", "raven", "sierra", "tango", "umber", "vector", "willow", "zephyr",
)  # fmt: skip
_FREE_TEXT: Final = ("comment", "message", "description", "text", "reason", "note", "summary")
_DIGESTS: Final = ("sha", "hash", "digest", "fingerprint", "checksum")


class CatalogSynthError(ValueError):
    """A catalog, or one of its message types, cannot be synthesized (every problem listed)."""


@dataclass(frozen=True)
class ColumnRules:
    """What the kingest column options of a field demand of its values."""

    required: bool = False
    gte: float | None = None
    lte: float | None = None
    lt: float | None = None
    max_length: int = DEFAULT_MAX_TEXT_LENGTH
    #: Role of an envelope field (``options_pb2.ROLE_*``), 0 when none.
    role: int = 0


@functools.cache
def column_rules(field: FieldDescriptor) -> ColumnRules:
    """The column options of ``field`` (the defaults when it has none); read once a field."""
    field_options = field.GetOptions()
    if not field_options.HasExtension(options_pb2.column):  # type: ignore[arg-type]
        return ColumnRules()
    found: options_pb2.ColumnOptions = field_options.Extensions[options_pb2.column]  # type: ignore[index]
    return ColumnRules(
        required=found.required,
        gte=found.gte if found.HasField("gte") else None,
        lte=found.lte if found.HasField("lte") else None,
        lt=found.lt if found.HasField("lt") else None,
        max_length=found.max_length or DEFAULT_MAX_TEXT_LENGTH,
        role=found.role,
    )


def _type_range(field: FieldDescriptor) -> tuple[float, float]:
    if field.type in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[field.type]
        return float(low), float(high)
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return -_FLOAT32_MAX, _FLOAT32_MAX
    return -_DOUBLE_MAX, _DOUBLE_MAX


def _allowed_range(field: FieldDescriptor, rules: ColumnRules) -> tuple[float, float]:
    """The values the type and the bounds allow, ``lt`` turned inclusive for integers."""
    low, high = _type_range(field)
    if rules.gte is not None:
        low = max(low, rules.gte)
    if rules.lte is not None:
        high = min(high, rules.lte)
    if rules.lt is not None:
        high = min(high, math.ceil(rules.lt) - 1 if field.type in _INTEGER_RANGES else rules.lt)
    return low, high


def bound_problems(field: FieldDescriptor, rules: ColumnRules) -> list[str]:
    """Why no value of ``field`` can satisfy its bounds (empty when one can)."""
    low, high = _allowed_range(field, rules)
    exclusive = rules.lt is not None and high == rules.lt and field.type not in _INTEGER_RANGES
    if low > high or (exclusive and low >= high):
        return [f"{field.full_name}: no value satisfies its bounds ({_describe(rules)})"]
    if field.type in _INTEGER_RANGES and math.ceil(low) > math.floor(high):
        return [f"{field.full_name}: no integer satisfies its bounds ({_describe(rules)})"]
    return []


def _describe(rules: ColumnRules) -> str:
    parts = [
        f"{name} {value:g}"
        for name, value in (("gte", rules.gte), ("lte", rules.lte), ("lt", rules.lt))
        if value is not None
    ]
    return ", ".join(parts)


@functools.cache
def _number_hint(name: str) -> tuple[float, float]:
    lowered = name.lower()
    for fragments, bounds in _NUMBER_HINTS:
        if any(fragment in lowered for fragment in fragments):
            return bounds
    return _DEFAULT_NUMBER_RANGE


def _window(hint: tuple[float, float], low: float, high: float) -> tuple[float, float]:
    """The part of ``hint`` inside ``[low, high]``, else a hint-wide window at its edge."""
    hint_low, hint_high = hint
    width = hint_high - hint_low
    if hint_high < low:
        return low, min(high, low + width)
    if hint_low > high:
        return max(low, high - width), high
    return max(hint_low, low), min(hint_high, high)


def _as_float32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def _float32_at_least(value: float) -> float:
    """The least float32 value not below ``value``."""
    nearest = _as_float32(value)
    if nearest >= value:
        return nearest
    if nearest == 0.0:
        return _as_float32(1e-45)  # the least positive float32
    bits: int = struct.unpack("<I", struct.pack("<f", nearest))[0]
    bits += 1 if nearest > 0 else -1  # one step away from zero, or towards it
    result: float = struct.unpack("<f", struct.pack("<I", bits))[0]
    return result


def number_for(
    field: FieldDescriptor, rules: ColumnRules, rng: random.Random, *, hint_name: str = ""
) -> float | int:
    """A number for ``field`` (or the value of a wrapper or map named ``hint_name``).

    Drawn from the range its name suggests, narrowed to what its type and bounds allow;
    a required number is not zero when its bounds allow another value.
    """
    low, high = _allowed_range(field, rules)
    window_low, window_high = _window(_number_hint(hint_name or field.name), low, high)
    if field.type in _INTEGER_RANGES:
        integer = rng.randint(math.ceil(window_low), math.floor(window_high))
        if integer == 0 and rules.required and math.floor(window_high) > 0:
            integer = math.floor(window_high)
        return integer
    value = round(window_low + (window_high - window_low) * rng.random(), 4)
    candidates = [value, window_low]
    if field.type == FieldDescriptor.TYPE_FLOAT:
        # A float field holds float32 values: the value as stored must keep the bounds.
        candidates = [_as_float32(value), _float32_at_least(window_low)]
    for candidate in candidates:
        if _within(candidate, rules, low, high):
            return candidate
    return candidates[-1]


def _within(value: float, rules: ColumnRules, low: float, high: float) -> bool:
    if rules.lt is not None and value >= rules.lt:
        return False
    return low <= value <= high


def short_id(name: str, rng: random.Random) -> str:
    """An entity id named after its field: ``conversation_id`` -> ``conversation-3fa2c1``."""
    stem = name.removesuffix("_id").replace("_", "-") or "id"
    return f"{stem}-{rng.getrandbits(24):06x}"


def uuid4(rng: random.Random) -> str:
    """A version-4 UUID drawn from ``rng`` (so reproducible, unlike :func:`uuid.uuid4`)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def is_uuid_name(name: str) -> bool:
    """Whether a field of this name holds a UUID rather than a short entity id."""
    return name in {"event_id", "correlation_id", "uuid"} or name.endswith(
        ("_event_id", "_uuid", "request_id", "trace_id")
    )


def sentence(rng: random.Random) -> str:
    """A few words of free text."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
    return " ".join(words).capitalize() + "."


def text_for(name: str, rng: random.Random) -> str:
    """A text value for a field named ``name`` that is not an id (ids are pooled)."""
    lowered = name.lower()
    if lowered == "source" or lowered.endswith("_source"):
        return rng.choice(_SOURCES)
    if lowered in {"environment", "env"} or lowered.endswith("_environment"):
        return rng.choice(_ENVIRONMENTS)
    if "version" in lowered:
        return f"{rng.randint(1, 4)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"
    if "model" in lowered:
        return rng.choice(_MODELS)
    if any(part in lowered for part in ("uri", "url", "endpoint")):
        return f"https://{rng.choice(WORDS)}.example.com/{rng.choice(WORDS)}"
    if "email" in lowered:
        return f"{rng.choice(WORDS)}@example.com"
    if "node" in lowered or "host" in lowered:
        return f"gpu-node-{rng.randint(1, 32):02d}"
    if any(part in lowered for part in _DIGESTS):
        return f"{rng.getrandbits(64):016x}"
    if any(part in lowered for part in _FREE_TEXT) or lowered.startswith("error"):
        return sentence(rng)
    if lowered.endswith("_at") or "time" in lowered:
        return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z"
    if rng.random() < 0.5:
        return rng.choice(WORDS)
    return f"{rng.choice(WORDS)}.{rng.choice(WORDS)}"


def is_free_text(name: str) -> bool:
    """Whether a field of this name is prose (often left empty) rather than a category."""
    lowered = name.lower()
    return any(part in lowered for part in _FREE_TEXT) or lowered.startswith("error")


def bytes_for(name: str, rng: random.Random) -> bytes:
    """Random bytes: a digest's length for digests, else a few bytes."""
    lowered = name.lower()
    length = 32 if any(part in lowered for part in _DIGESTS) else rng.randint(1, 16)
    return rng.randbytes(length)


def truncated(text: str, rules: ColumnRules) -> str:
    """``text`` cut to the field's ``max_length`` characters."""
    return text[: rules.max_length]


def map_keys(count: int, rng: random.Random) -> Iterator[str]:
    """``count`` distinct keys for a map of strings."""
    yield from rng.sample(
        ("tenant", "feature", "region", "experiment", "tier", "team", "arm"), count
    )
