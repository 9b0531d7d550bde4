"""Typed values that specs, model builders and dataset loaders share.

Each type is an ``Annotated`` pydantic type: a builder or loader that declares
``width: PositiveInt = 32`` has that option checked at spec time, with the same
message and the same JSON Schema everywhere. Types that accept more than one
shape (a count or a fraction, a list or a single width) validate with one
function of their own, so that a mistake gets one message naming what is
accepted instead of one message per alternative.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Annotated, Any, Callable

from pydantic import Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


def shown(value: Any, limit: int = 60) -> str:
    """A value as a message quotes it: repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def invalid(message: str, value: Any) -> PydanticCustomError:
    """The error a custom type raises: ``message, got <value>``."""
    return PydanticCustomError("tune_prune", "{message}, got {got}", {"message": message, "got": shown(value)})


def is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def custom(check: Callable[[Any], Any], schema: dict[str, Any]) -> Any:
    """An Annotated type validated by ``check`` (which returns the value or raises) with ``schema``."""
    return Annotated[Any, PlainValidator(check), WithJsonSchema(schema)]


def _size(value: Any) -> int | float:
    if is_int(value) and value >= 1:
        return int(value)
    if is_number(value) and not is_int(value) and 0.0 < float(value) < 1.0:
        return float(value)
    raise invalid("must be an int >= 1 (a count) or a float in (0, 1) (a fraction)", value)


#: A split size: a count of examples, or a fraction of them.
Size = custom(_size, {"anyOf": [{"type": "integer", "minimum": 1},
                                {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}]})


def _widths(value: Any) -> int | list[int]:
    if is_int(value) and value >= 1:
        return int(value)
    if isinstance(value, (list, tuple)) and value and all(is_int(v) and v >= 1 for v in value):
        return [int(v) for v in value]
    raise invalid("must be a non-empty list of ints >= 1 (or one int >= 1)", value)


#: Layer widths: a list of ints >= 1, or one int for a single layer.
Widths = custom(_widths, {"anyOf": [{"type": "integer", "minimum": 1},
                                    {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1}]})
