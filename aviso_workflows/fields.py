"""Field types of an event schema: how one request value is read, checked and written canonically.

Every writer and reader of keys goes through these classes, so a value has exactly one spelling in
etcd (``expver=0001``, ``time=00``, ``date=20261122``), the spelling pyaviso's listeners compare with.
"""

from __future__ import annotations

import datetime as dt
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import SchemaError, ValidationError, shown

#: Characters that would corrupt a key (separators of the key layout) or a command line; lone surrogates
#: cannot be written as UTF-8 at all.
FORBIDDEN_CHARACTERS = re.compile(r"[/,=*\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: The most values one field may expand to; a typo such as ``0/to/10000000`` stops here.
MAX_VALUES_PER_FIELD = 100_000
#: The longest text value of a key field, in characters (keys must stay small enough for a transaction).
MAX_VALUE_LENGTH = 256
_INTEGER = re.compile(r"^[+-]?\d+$")
#: Longer digit strings are no value of any field (and Python refuses to read beyond 4300 digits).
_MAX_DIGITS = 30


def check_characters(field: str, value: str) -> str:
    """Return ``value`` unless it holds a character that would corrupt a key."""
    if value == "":
        raise ValidationError(field, value, "an empty value is not allowed")
    if len(value) > MAX_VALUE_LENGTH:
        raise ValidationError(field, value, f"values are at most {MAX_VALUE_LENGTH} characters long")
    bad = FORBIDDEN_CHARACTERS.search(value)
    if bad:
        raise ValidationError(
            field, value, f"values may not contain {bad.group()!r} ('/', ',', '=', '*', spaces and control characters)"
        )
    return value


def _as_int(field: str, value: Any, what: str = "an integer") -> int:
    if isinstance(value, bool):
        raise ValidationError(field, value, f"expected {what}, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.match(value.strip()):
        if len(value.strip()) > _MAX_DIGITS:
            raise ValidationError(field, value, f"expected {what} of at most {_MAX_DIGITS} digits")
        return int(value.strip())
    raise ValidationError(field, value, f"expected {what}")


def split_raw(field: str, raw: Any) -> list[Any]:
    """Split a raw request value into items: a list, ``a/b/c``, or keep a scalar as one item."""
    if isinstance(raw, (list, tuple, set, frozenset)):
        items: list[Any] = []
        for item in raw:
            items.extend(split_raw(field, item) if isinstance(item, str) and "/" in item else [item])
        if not items:
            raise ValidationError(field, list(raw), "an empty list matches nothing; give at least one value")
        return items
    if isinstance(raw, str) and "/" in raw:
        return [raw]  # parsed by Field.expand, which knows ranges
    if raw is None:
        raise ValidationError(field, raw, "a value is required (omit the field to match any value)")
    return [raw]


#: Expanded raw values each field keeps (then it starts again): far more than the distinct values of a workload.
_EXPANDED_KEPT = 4096


class Field(ABC):
    """One field of an event schema."""

    #: Short type name used in schema files.
    kind: str = "string"

    def __init__(self, name: str, default: str | None = None) -> None:
        self.name = name
        self.default = default
        #: Raw values already expanded: thousands of requests (one per deferred trigger) repeat the same dates,
        #: classes and streams; each is checked once.
        self._expanded: dict[str | int, tuple[str, ...]] = {}

    @abstractmethod
    def canonical(self, value: Any) -> str:
        """Return the canonical spelling of one scalar value or raise ValidationError."""

    @abstractmethod
    def describe(self) -> str:
        """Say in a few words what values are valid."""

    def range(self, start: str, end: str, by: str | None) -> list[str]:
        """Expand ``start/to/end[/by/by]``; only ordered fields support it."""
        raise ValidationError(self.name, f"{start}/to/{end}", f"ranges are not supported for {self.kind} fields")

    def expand(self, raw: Any) -> tuple[str, ...]:
        """Return the canonical values of a raw request value: scalar, list, ``a/b/c`` or a range."""
        if not self._lasting(raw):
            return self._expand(raw)
        expanded = self._expanded.get(raw)
        if expanded is None:
            expanded = self._expand(raw)
            if len(self._expanded) >= _EXPANDED_KEPT:
                self._expanded.clear()
            self._expanded[raw] = expanded
        return expanded

    def _lasting(self, raw: Any) -> bool:
        """True when ``raw`` always expands to the same values (a text or a number; not a list, not a boolean)."""
        return type(raw) is str or type(raw) is int

    def _expand(self, raw: Any) -> tuple[str, ...]:
        values: list[str] = []
        for item in split_raw(self.name, raw):
            if isinstance(item, str) and "/" in item:
                values.extend(self._expand_slashes(item))
            else:
                values.append(self.canonical(item))
            if len(values) > MAX_VALUES_PER_FIELD:
                raise ValidationError(self.name, raw, f"at most {MAX_VALUES_PER_FIELD} values per field")
        return tuple(dict.fromkeys(values))

    def _expand_slashes(self, text: str) -> list[str]:
        tokens = text.split("/")
        if any(token.strip() == "" for token in tokens):
            raise ValidationError(self.name, text, "lists are written a/b/c, ranges a/to/b[/by/n]; no empty item")
        lowered = [token.strip().lower() for token in tokens]
        if "to" in lowered or "by" in lowered:
            if len(tokens) not in (3, 5) or lowered[1] != "to" or (len(tokens) == 5 and lowered[3] != "by"):
                raise ValidationError(self.name, text, "a range is written start/to/end or start/to/end/by/step")
            return self.range(tokens[0].strip(), tokens[2].strip(), tokens[4].strip() if len(tokens) == 5 else None)
        return [self.canonical(token.strip()) for token in tokens]

    def to_pyaviso(self) -> list[dict[str, Any]]:
        """The pyaviso 1.x listener-schema handlers equivalent to this field."""
        return [{"type": "StringHandler"}]

    def to_config(self) -> dict[str, Any]:
        """This field in the project's own schema format."""
        config: dict[str, Any] = {"type": self.kind}
        if self.default is not None:
            config["default"] = self.default
        return config


def _checked_steps(field: str, text: str, start: int, end: int, by: int) -> range:
    if by <= 0:
        raise ValidationError(field, text, "the step of a range ('by') must be a positive number")
    if end < start:
        raise ValidationError(field, text, "a range must go from the smaller to the larger bound")
    count = (end - start) // by + 1
    if count > MAX_VALUES_PER_FIELD:
        raise ValidationError(field, text, f"at most {MAX_VALUES_PER_FIELD} values per field")
    return range(start, end + 1, by)


class IntField(Field):
    """An integer within bounds, e.g. a forecast step (0..100000)."""

    kind = "int"

    def __init__(self, name: str, minimum: int | None = None, maximum: int | None = None, width: int = 0,
                 default: str | None = None) -> None:
        super().__init__(name, default)
        for label, bound in (("min", minimum), ("max", maximum)):
            if bound is not None and not _is_whole(bound):
                raise SchemaError(f"field {name!r}: {label} must be a whole number, not {shown(bound)}")
        if not _is_whole(width) or not 0 <= width <= 32:
            raise SchemaError(f"field {name!r}: width must be a whole number from 0 to 32, not {shown(width)}")
        self.minimum = minimum
        self.maximum = maximum
        self.width = width

    def describe(self) -> str:
        low = "-inf" if self.minimum is None else str(self.minimum)
        high = "inf" if self.maximum is None else str(self.maximum)
        return f"an integer from {low} to {high}"

    def _number(self, value: Any) -> int:
        number = _as_int(self.name, value)
        if (self.minimum is not None and number < self.minimum) or (self.maximum is not None and number > self.maximum):
            raise ValidationError(self.name, value, f"expected {self.describe()}")
        return number

    def canonical(self, value: Any) -> str:
        return str(self._number(value)).zfill(self.width)

    def range(self, start: str, end: str, by: str | None) -> list[str]:
        text = f"{start}/to/{end}" + (f"/by/{by}" if by else "")
        step = 1 if by is None else _as_int(self.name, by, "an integer step")
        numbers = _checked_steps(self.name, text, self._number(start), self._number(end), step)
        return [self.canonical(n) for n in numbers]

    def to_pyaviso(self) -> list[dict[str, Any]]:
        handler: dict[str, Any] = {"type": "IntHandler"}
        if self.minimum is not None and self.maximum is not None:
            handler["range"] = [self.minimum, self.maximum]
        if self.width:
            handler["canonic"] = "{0:0>" + str(self.width) + "}"
        return [handler]

    def to_config(self) -> dict[str, Any]:
        config = super().to_config()
        config.update({k: v for k, v in (("min", self.minimum), ("max", self.maximum), ("width", self.width)) if v})
        return config


class ExpverField(Field):
    """A MARS experiment version: four characters, numbers zero-padded (``1`` → ``0001``)."""

    kind = "expver"
    _ALNUM = re.compile(r"^[0-9a-zA-Z]{4}$")

    def describe(self) -> str:
        return "a number from 0 to 9999 (written 0001) or four letters and digits"

    def canonical(self, value: Any) -> str:
        if isinstance(value, str) and self._ALNUM.match(value.strip()) and not value.strip().isdigit():
            return value.strip().lower()
        try:
            number = _as_int(self.name, value)
        except ValidationError:
            raise ValidationError(self.name, value, f"expected {self.describe()}") from None
        if not 0 <= number <= 9999:
            raise ValidationError(self.name, value, f"expected {self.describe()}")
        return f"{number:04d}"

    def to_pyaviso(self) -> list[dict[str, Any]]:
        return [{"type": "IntHandler", "canonic": "{0:0>4}", "range": [0, 9999]},
                {"type": "RegexHandler", "regex": "^[0-9a-z]{4}$"}]


def _yyyymmdd(date: dt.date) -> str:
    """``YYYYMMDD`` with a four-digit year (``strftime`` drops the zeros of years before 1000)."""
    return f"{date.year:04d}{date.month:02d}{date.day:02d}"


class DateField(Field):
    """A date written ``YYYYMMDD``; reads ISO dates, ``date`` objects and ``0``/``-1`` (days from today, UTC)."""

    kind = "date"
    _RELATIVE = re.compile(r"^[+-]?\d{1,5}$")

    def describe(self) -> str:
        return ("a date as YYYYMMDD, YYYY-MM-DD or an ISO date-time (YYYY-MM-DDTHH:MM:SS), or 0, -1, ... for days "
                "relative to today (UTC)")

    def _lasting(self, raw: Any) -> bool:
        """Not a date relative to today (``0``, ``-1``, also inside a list or range): it changes at midnight."""
        return super()._lasting(raw) and not any(self._RELATIVE.match(part.strip()) for part in str(raw).split("/"))

    def to_date(self, value: Any) -> dt.date:
        """Read one date value."""
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValidationError(self.name, value, f"expected {self.describe()}")
        text = str(value).strip()
        if self._RELATIVE.match(text):
            return self._relative(value, int(text))
        if len(text) > 10 and text[4] == "-" and text[7] == "-":
            return self._moment(value, text)
        if len(text) == 10 and text[4] == "-" and text[7] == "-":
            return self._parse(value, text, "%Y-%m-%d")
        if len(text) == 8 and text.isdigit():
            return self._parse(value, text, "%Y%m%d")
        raise ValidationError(self.name, value, f"expected {self.describe()}")

    def _relative(self, value: Any, days: int) -> dt.date:
        if days > 0:
            raise ValidationError(self.name, value, "relative dates count back from today: 0, -1, -2, ...")
        return dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)

    def _moment(self, value: Any, text: str) -> dt.date:
        """The date of a whole ISO 8601 date-time (``2026-12-01T06:00:00Z``): trailing text is refused, not
        cut off, so a typo never turns into a valid date."""
        if text[10] not in "T ":
            raise ValidationError(self.name, value, f"expected {self.describe()}")
        try:
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text).date()
        except ValueError:
            raise ValidationError(self.name, value, f"not a date-time; expected {self.describe()}") from None

    def _parse(self, value: Any, text: str, pattern: str) -> dt.date:
        try:
            return dt.datetime.strptime(text, pattern).date()
        except ValueError:
            raise ValidationError(self.name, value, f"not a calendar date; expected {self.describe()}") from None

    def canonical(self, value: Any) -> str:
        return _yyyymmdd(self.to_date(value))

    def range(self, start: str, end: str, by: str | None) -> list[str]:
        text = f"{start}/to/{end}" + (f"/by/{by}" if by else "")
        first, last = self.to_date(start), self.to_date(end)
        step = 1 if by is None else _as_int(self.name, by, "a whole number of days")
        days = _checked_steps(self.name, text, 0, (last - first).days, step)
        return [_yyyymmdd(first + dt.timedelta(days=n)) for n in days]

    def to_pyaviso(self) -> list[dict[str, Any]]:
        return [{"type": "DateHandler", "canonic": "%Y%m%d"}]


class TimeField(Field):
    """A base time in hours written with two digits (``0`` → ``00``); ``1200`` and ``12:00`` are read as 12."""

    kind = "time"

    def __init__(self, name: str, values: Sequence[int] | None = (0, 6, 12, 18), default: str | None = None) -> None:
        super().__init__(name, default)
        if values is not None and (not isinstance(values, (list, tuple, range)) or not values
                                   or not all(_is_whole(v) and 0 <= v <= 23 for v in values)):
            raise SchemaError(f"field {name!r}: values must list hours from 0 to 23, not {shown(values)}")
        self.values = tuple(values) if values is not None else None

    def describe(self) -> str:
        if self.values is None:
            return "an hour from 0 to 23"
        return "one of " + ", ".join(f"{v:02d}" for v in self.values)

    def _hour(self, value: Any) -> int:
        text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else None
        if text is None:
            raise ValidationError(self.name, value, f"expected {self.describe()}")
        text = text.replace(":", "") if re.match(r"^\d{1,2}:00$", text) else text
        if re.match(r"^\d{3,4}$", text) and text.endswith("00"):
            text = text[:-2]
        if not re.match(r"^\d{1,2}$", text):
            raise ValidationError(self.name, value, f"expected {self.describe()}")
        hour = int(text)
        valid = self.values if self.values is not None else range(24)
        if hour not in valid:
            raise ValidationError(self.name, value, f"expected {self.describe()}")
        return hour

    def canonical(self, value: Any) -> str:
        return f"{self._hour(value):02d}"

    def range(self, start: str, end: str, by: str | None) -> list[str]:
        text = f"{start}/to/{end}" + (f"/by/{by}" if by else "")
        first, last = self._hour(start), self._hour(end)
        if by is not None:
            step = _as_int(self.name, by, "a whole number of hours")
            return [self.canonical(h) for h in _checked_steps(self.name, text, first, last, step)]
        _checked_steps(self.name, text, first, last, 1)
        valid = self.values if self.values is not None else range(24)
        return [f"{h:02d}" for h in valid if first <= h <= last]

    def to_pyaviso(self) -> list[dict[str, Any]]:
        return [{"type": "TimeHandler", "canonic": "{0:0>2}", "values": list(self.values or range(24))}]

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "values": list(self.values) if self.values is not None else None}


class EnumField(Field):
    """One of a fixed set of names, matched without regard to case and written in lower case."""

    kind = "enum"

    def __init__(self, name: str, values: Iterable[str] | Mapping[str, Iterable[str]],
                 default: str | None = None) -> None:
        super().__init__(name, default)
        if not isinstance(values, (list, tuple, Mapping)) or not all(_is_name(v) for v in values):
            raise SchemaError(f"enum field {name!r}: values must list names, not {shown(values)}")
        aliases = values if isinstance(values, Mapping) else {v: () for v in values}
        if not all(isinstance(s, (list, tuple)) and all(_is_name(n) for n in s) for s in aliases.values()):
            raise SchemaError(f"enum field {name!r}: synonyms must list names, not {shown(values)}")
        self.values = tuple(str(v).lower() for v in aliases)
        self._lookup: dict[str, str] = {}
        for canonical, synonyms in aliases.items():
            for spelling in (canonical, *synonyms):
                self._lookup[str(spelling).lower()] = str(canonical).lower()
        if not self.values:
            raise SchemaError(f"enum field {name!r} needs at least one value")

    def describe(self) -> str:
        shown = ", ".join(self.values[:25]) + (", ..." if len(self.values) > 25 else "")
        return f"one of {shown}"

    def canonical(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValidationError(self.name, value, f"expected {self.describe()}")
        found = self._lookup.get(str(value).strip().lower())
        if found is None:
            raise ValidationError(self.name, value, f"expected {self.describe()}")
        return found

    def to_pyaviso(self) -> list[dict[str, Any]]:
        handler: dict[str, Any] = {"type": "EnumHandler", "values": list(self.values)}
        if self.default is not None:
            handler["default"] = self.default
        return [handler]

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "values": list(self.values)}


class StringField(Field):
    """Free text without key separators, optionally folded to upper or lower case."""

    kind = "string"

    def __init__(self, name: str, case: str | None = None, pattern: str | None = None,
                 default: str | None = None) -> None:
        super().__init__(name, default)
        if case not in (None, "upper", "lower"):
            raise SchemaError(f"field {name!r}: case must be 'upper' or 'lower', not {case!r}")
        self.case = case
        try:
            self.pattern = re.compile(pattern) if pattern else None
        except (TypeError, re.error) as error:
            raise SchemaError(f"field {name!r}: pattern {shown(pattern)} is not a regular expression "
                              f"({error})") from None

    def describe(self) -> str:
        text = "text without '/', ',', '=', '*', spaces or control characters"
        return text + (f", matching {self.pattern.pattern}" if self.pattern else "")

    def canonical(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValidationError(self.name, value, f"expected {self.describe()}")
        text = str(value)
        text = text.upper() if self.case == "upper" else text.lower() if self.case == "lower" else text
        check_characters(self.name, text)
        if self.pattern and not self.pattern.fullmatch(text):
            raise ValidationError(self.name, value, f"expected {self.describe()}")
        return text

    def to_pyaviso(self) -> list[dict[str, Any]]:
        if self.pattern:
            return [{"type": "RegexHandler", "regex": self.pattern.pattern}]
        return [{"type": "StringHandler", **({"canonic": self.case} if self.case else {})}]

    def to_config(self) -> dict[str, Any]:
        config = super().to_config()
        config.update({k: v for k, v in (("case", self.case), ("pattern", self.pattern and self.pattern.pattern)) if v})
        return config


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_name(value: Any) -> bool:
    return isinstance(value, str) or _is_whole(value)


FIELD_TYPES: dict[str, type[Field]] = {
    cls.kind: cls for cls in (IntField, ExpverField, DateField, TimeField, EnumField, StringField)
}


def field_from_config(name: str, config: Mapping[str, Any]) -> Field:
    """Build a field from the project's own schema format (``{type: int, min: 0, max: 240}``)."""
    if not isinstance(config, Mapping):
        raise SchemaError(f"field {name!r}: expected a mapping such as {{type: int, min: 0}}, not {shown(config)}")
    kind = config.get("type", "string")
    options = {k: v for k, v in config.items() if k != "type"}
    renames = {"min": "minimum", "max": "maximum"}
    options = {renames.get(k, k): v for k, v in options.items()}
    if not isinstance(kind, str) or kind not in FIELD_TYPES:
        raise SchemaError(f"field {name!r}: unknown type {shown(kind)}; valid types: {', '.join(FIELD_TYPES)}")
    try:
        return _checked_default(FIELD_TYPES[kind](name, **options))
    except TypeError as error:
        raise SchemaError(f"field {name!r} of type {kind!r}: {error}") from None


def _checked_default(field: Field) -> Field:
    """``field`` if its default is one of its values (a default is written into keys)."""
    if field.default is not None:
        try:
            field.canonical(field.default)
        except ValidationError as error:
            raise SchemaError(f"field {field.name!r}: the default {shown(field.default)} is not valid; "
                              f"{error.valid}") from None
    return field


def field_from_pyaviso(name: str, handlers: Sequence[Mapping[str, Any]]) -> Field:
    """Build a field from pyaviso 1.x listener-schema handlers (the first handler decides the type)."""
    if not handlers:
        raise SchemaError(f"field {name!r} has no handler")
    handler = dict(handlers[0])
    kind = handler.get("type")
    canonic = handler.get("canonic")
    if canonic is not None and not isinstance(canonic, str):
        raise SchemaError(f"field {name!r}: canonic {shown(canonic)} is not text")
    if kind == "DateHandler":
        return DateField(name)
    if kind == "TimeHandler":
        return TimeField(name, _hours(name, handler.get("values", range(24))))
    if kind == "EnumHandler":
        values = handler.get("values") or []
        if not isinstance(values, list) or not values:
            raise SchemaError(f"field {name!r}: EnumHandler without a list of values (pyaviso fills them from MARS)")
        return _checked_default(EnumField(name, [str(v) for v in values], default=handler.get("default")))
    if kind == "IntHandler":
        return _int_from_pyaviso(name, handler.get("range", (None, None)), canonic)
    if kind == "StringHandler":
        return StringField(name, case=canonic)
    if kind == "RegexHandler":
        return StringField(name, pattern=handler.get("regex"))
    raise SchemaError(f"field {name!r}: unsupported pyaviso handler {shown(kind)}")


def _hours(name: str, values: Any) -> list[int]:
    try:
        return [_as_int(name, v) for v in values]
    except (TypeError, ValidationError):
        raise SchemaError(f"field {name!r}: TimeHandler values must list hours, not {shown(values)}") from None


def _int_from_pyaviso(name: str, bounds: Any, canonic: str | None) -> Field:
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise SchemaError(f"field {name!r}: IntHandler range must be [low, high], not {shown(bounds)}")
    width_match = re.search(r"0>(\d{1,2})\}", canonic or "")
    width = int(width_match.group(1)) if width_match else 0
    if name == "expver" and width == 4:
        return ExpverField(name)
    return IntField(name, bounds[0], bounds[1], width)
