"""Request: a validated, canonical "when data available" condition over the keys of one event."""

from __future__ import annotations

import itertools
import re
from collections.abc import Collection, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from functools import cached_property
from typing import Any

from .errors import ValidationError, shown
from .schema import BUILTIN_SCHEMAS, EventSchema, SchemaRegistry

#: The most concrete keys one request may stand for (and the most combinations of the values it gives).
MAX_KEYS_PER_REQUEST = 1_000_000
#: Values of a field that a match looks through as they are; more are made a set once.
FEW_VALUES = 8
#: The longest location (payload) in bytes of UTF-8: 127 keys with it must fit in one etcd transaction.
MAX_LOCATION_BYTES = 4096
#: etcd's longest lease (its MaxLeaseTTL), in seconds.
MAX_TTL_SECONDS = 9_000_000_000
#: The longest timeout of a wait, in seconds (ten years; the system's clocks refuse much longer ones).
MAX_TIMEOUT_SECONDS = 315_360_000
#: Entries of a pyaviso-style request that are not key fields.
NON_KEY_ENTRIES = ("event", "location", "ttl")
#: Operators of a constraint object (one per object), named as Aviso 2's watch and replay name them.
CONSTRAINT_OPERATORS = ("eq", "in", "gt", "gte", "lt", "lte", "between")
#: Kinds of field whose values compare as numbers (``step``, ``time``).
NUMERIC_KINDS = ("int", "time")


@dataclass(frozen=True)
class Comparison:
    """A numeric condition on one field's canonical value: ``Comparison("gte", (6,))`` is ``>= 6``;
    ``between`` holds two inclusive bounds."""

    operator: str
    bounds: tuple[int, ...]

    def holds(self, value: str | None) -> bool:
        """True when ``value`` (a canonical key value) satisfies the condition."""
        try:
            number = int(value) if value is not None else None
        except ValueError:
            return False
        if number is None:
            return False
        low = self.bounds[0]
        if self.operator == "between":
            return low <= number <= self.bounds[1]
        return {"gt": number > low, "gte": number >= low, "lt": number < low, "lte": number <= low}[self.operator]


@dataclass(frozen=True)
class Request:
    """Canonical values per field; a field left out matches any value (a wildcard)."""

    schema: EventSchema
    values: Mapping[str, tuple[str, ...]]
    #: Numeric conditions on fields left open in ``values`` (from constraint objects of a watch).
    comparisons: Mapping[str, Comparison] = dataclass_field(default_factory=dict)
    _allowed_values: tuple[tuple[str, Collection[str]], ...] = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # What :meth:`matches` looks up, made with the request (a wait's release should not pay for it): the key
        # fields the request constrains with their values, as sets when there are many (a year of dates is matched
        # at once), else as given (a few values are looked through as quickly).
        key_fields = self.schema.key_fields
        allowed = tuple((name, frozenset(values) if len(values) > FEW_VALUES else values)
                        for name, values in self.values.items() if name in key_fields)
        object.__setattr__(self, "_allowed_values", allowed)

    @classmethod
    def build(cls, event: str | EventSchema, raw: Mapping[str, Any],
              registry: SchemaRegistry | None = None) -> Request:
        """Validate and canonicalise ``raw`` (scalars, lists, ``a/b/c``, ``a/to/b/by/n``) for ``event``."""
        schema = event if isinstance(event, EventSchema) else (registry or SchemaRegistry())[event]
        values: dict[str, tuple[str, ...]] = {}
        for name, value in check_fields(raw).items():
            if not isinstance(name, str) or not name.strip() or not name.isprintable():
                raise ValidationError("request", name, "field names are non-empty printable text such as 'class'")
            values[name] = schema.field(name).expand(value)
        for name, fld in schema.fields.items():
            if name not in values and fld.default is not None:
                values[name] = (fld.canonical(fld.default),)
        missing = sorted(schema.required - set(values))
        if missing:
            raise ValidationError(missing[0], None, f"field {missing[0]!r} is required for event {schema.name!r}")
        order = list(dict.fromkeys([*schema.key_fields, *schema.fields]))
        request = cls(schema, {n: values[n] for n in order if n in values})
        if request.count > MAX_KEYS_PER_REQUEST:
            raise ValidationError("request", request.count,
                                  f"at most {MAX_KEYS_PER_REQUEST} keys (combinations of key-field values) per request")
        return request

    @classmethod
    def build_filter(cls, event: str | EventSchema, raw: Mapping[str, Any],
                     registry: SchemaRegistry | None = None) -> Request:
        """Like :meth:`build`, for reading and watching: a value may also be a constraint object with one
        operator, ``{"eq": v}``, ``{"in": [...]}``, or on numeric fields ``{"gt"|"gte"|"lt"|"lte": n}``
        and ``{"between": [low, high]}`` (inclusive)."""
        schema = event if isinstance(event, EventSchema) else (registry or SchemaRegistry())[event]
        plain: dict[Any, Any] = {}
        comparisons: dict[str, Comparison] = {}
        for name, value in check_fields(raw).items():
            if not isinstance(value, Mapping):
                plain[name] = value
                continue
            operator, operand = _one_operator(name, value)
            if operator == "eq" and not isinstance(operand, (list, tuple, Mapping)):
                plain[name] = operand
            elif operator == "in" and isinstance(operand, (list, tuple)) and operand:
                plain[name] = list(operand)
            elif operator in ("eq", "in"):
                what = "a single value" if operator == "eq" else "a non-empty list of values"
                raise ValidationError(name, value, f"operator {operator!r} expects {what}")
            else:
                comparisons[name] = _comparison(schema, name, operator, operand)
        request = cls.build(schema, plain)
        return replace(request, comparisons=comparisons) if comparisons else request

    @property
    def event(self) -> str:
        """Name of the event."""
        return self.schema.name

    @cached_property
    def missing(self) -> tuple[str, ...]:
        """Key fields the request leaves open."""
        return tuple(f for f in self.schema.key_fields if f not in self.values)

    @property
    def is_complete(self) -> bool:
        """True when every key field has values, so the request stands for a finite set of keys."""
        return not self.missing

    @cached_property
    def count(self) -> int:
        """Number of concrete keys when complete; else the combinations of the values given (what a read walks)."""
        total = 1
        for name in self.schema.key_fields:
            total *= len(self.values.get(name, ("",)))
        return total

    def require_complete(self, purpose: str) -> None:
        """Raise a ValidationError naming the first open field if the request is not complete."""
        if self.missing:
            raise ValidationError(self.missing[0], None,
                                  f"{purpose} needs every key field; missing: {', '.join(self.missing)}")

    def concrete(self) -> Iterator[dict[str, str]]:
        """Every concrete request (one value per key field), in key order."""
        self.require_complete("expanding keys")
        names = self.schema.key_fields
        for combination in itertools.product(*(self.values[n] for n in names)):
            yield dict(zip(names, combination))

    def keys(self) -> list[str]:
        """All data keys of a complete request, in the order of :meth:`concrete`."""
        parts = self.schema.key_parts
        if parts is None:
            return [self.schema.format_key(values) for values in self.concrete()]
        self.require_complete("expanding keys")
        # the template's fields in key order, the last varying fastest: each step extends every key built so far
        # (while a field has one value, the one key so far is extended alone; the last step adds the tail)
        fields, tail = parts
        keys, last = [""], len(fields) - 1
        for index, (literal, name) in enumerate(fields):
            end = tail if index == last else ""
            keys = [f"{key}{literal}{value}{end}" for key in keys for value in self.values[name]]
        return keys if fields else [tail]

    def matches(self, fields: Mapping[str, str]) -> bool:
        """True when a parsed key's fields satisfy every constraint of the request."""
        for name, allowed in self._allowed_values:  # a plain loop: this runs once per key a watch delivers
            if fields.get(name) not in allowed:
                return False
        return not self.comparisons or all(c.holds(fields.get(name)) for name, c in self.comparisons.items())


    def match_key(self, key: str) -> dict[str, str] | None:
        """The fields of ``key`` if it is a data key matched by this request, else None."""
        fields = self.schema.parse_key(key)
        return fields if fields is not None and self.matches(fields) else None

    def status_keys(self) -> list[str]:
        """The status keys (``base/``) this request's keys live under; needs the base fields."""
        base = self.schema.base_fields
        open_fields = [f for f in base if f not in self.values]
        if open_fields:
            raise ValidationError(open_fields[0], None, f"field {open_fields[0]!r} chooses where event "
                                  f"{self.event!r} is stored and must be given")
        combos = itertools.product(*(self.values[f] for f in base))
        return list(dict.fromkeys(self.schema.status_key(dict(zip(base, c))) for c in combos))

    @cached_property
    def status_prefixes(self) -> tuple[str, ...]:
        """:meth:`status_keys` as a tuple, computed once: the prefixes a stored key of the request starts with
        (``str.startswith`` takes the tuple as it is)."""
        return tuple(self.status_keys())

    def read_prefixes(self) -> list[str]:
        """Key prefixes that together cover every key of the request, for range reads.

        Fields are fixed in key order up to the last field with several values (or the first open
        field); each combination of the values before it gives one prefix. So ``365 dates x 41 steps``
        reads 365 small ranges, not a year of everything.
        """
        self.status_keys()  # the base fields must be known to know where to read
        names = self.schema.key_fields
        first_open = next((i for i, n in enumerate(names) if n not in self.values), len(names))
        multi = [i for i in range(first_open) if len(self.values[names[i]]) > 1]
        fixed = names[:multi[-1]] if multi else names[:first_open]
        combinations = itertools.product(*(self.values[n] for n in fixed))
        return list(dict.fromkeys(self.schema.key_prefix(dict(zip(fixed, c))) for c in combinations))

    def as_dict(self) -> dict[str, Any]:
        """The request as plain data: one string per single-valued field, a list otherwise."""
        return {n: v[0] if len(v) == 1 else list(v) for n, v in self.values.items()}

    def __str__(self) -> str:
        parts = [f"event={self.event}"] + [f"{n}={'/'.join(v)}" for n, v in self.values.items()]
        return ",".join(parts)


def _one_operator(name: str, constraint: Mapping[Any, Any]) -> tuple[str, Any]:
    """The operator and operand of a constraint object, which holds exactly one known operator."""
    valid = "a constraint object holds exactly one operator: " + ", ".join(CONSTRAINT_OPERATORS)
    if len(constraint) != 1:
        raise ValidationError(name, dict(constraint), valid)
    operator, operand = next(iter(constraint.items()))
    if operator not in CONSTRAINT_OPERATORS:
        raise ValidationError(name, dict(constraint), f"unknown operator {shown(operator)}; {valid}")
    return str(operator), operand


def _comparison(schema: EventSchema, name: str, operator: str, operand: Any) -> Comparison:
    """A numeric comparison on a key field of ``schema``; operands are checked like values of the field."""
    field = schema.field(name)
    if field.kind not in NUMERIC_KINDS or name not in schema.key_fields:
        raise ValidationError(name, {operator: operand}, f"operator {operator!r} compares numbers; field {name!r} "
                              f"of event {schema.name!r} is not numeric (use a value, a list or 'in')")
    operands = operand if operator == "between" else [operand]
    if not isinstance(operands, (list, tuple)) or len(operands) != (2 if operator == "between" else 1) \
            or any(isinstance(o, (list, tuple, Mapping, bool)) for o in operands):
        what = "[low, high]" if operator == "between" else "one number"
        raise ValidationError(name, {operator: operand}, f"operator {operator!r} expects {what}")
    bounds = tuple(int(field.canonical(o)) for o in operands)
    if operator == "between" and bounds[0] > bounds[1]:
        raise ValidationError(name, {operator: operand}, "'between' expects [low, high] with low <= high")
    return Comparison(operator, bounds)


def ready_prefix(keys: Sequence[str], found: Container[str], start: int = 0) -> int:
    """How many of ``keys`` are ready: found, in order, with none missing before them (the contiguous prefix).

    ``keys`` are a request's keys in request order (:meth:`Request.keys`: the key fields in schema order,
    the last varying fastest, each field's values in the order the request gives them), so for
    ``date=D1/D2,step=0/6`` the order is D1 step 0, D1 step 6, D2 step 0, D2 step 6. With steps 0, 6, 12,
    18 and 30 of 0/to/48/by/6 found, 4 are ready: step 30 counts only once 24 is found. This is the
    progress every consumer shows (an ecFlow meter, a sensor's log, the waiters' registry), so that a
    trigger on "N ready" never fires before the N-th key exists. ``start``: a prefix known to be ready
    already (found keys never go away during a wait), so a wait costs one pass over its keys in all.
    """
    ready = max(0, start)
    while ready < len(keys) and keys[ready] in found:
        ready += 1
    return ready


def parse_pairs(text: str) -> dict[str, str]:
    """Parse pyaviso-style ``k=v,k=v`` text (lists inside values use ``/``)."""
    pairs: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValidationError("request", part, "expected key=value pairs separated by commas")
        name, value = (s.strip() for s in part.split("=", 1))
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValidationError("request", name, "field names are letters, digits and '_'")
        if name in pairs:
            raise ValidationError(name, value, f"field {name!r} is given twice")
        pairs[name] = value
    if not pairs:
        raise ValidationError("request", text, "expected key=value pairs such as event=mars,class=od")
    return pairs


def check_fields(raw: Any) -> Mapping[Any, Any]:
    """``raw`` if it is a mapping (of field names to values), else a ValidationError."""
    if not isinstance(raw, Mapping):
        raise ValidationError("request", raw, "expected a mapping of field names to values")
    return raw


def split_event(raw: Mapping[str, Any], event: str | None = None) -> tuple[str, dict[str, Any]]:
    """Separate the ``event`` entry from the request fields; ``event`` given apart must agree."""
    fields = dict(check_fields(raw))
    named = fields.pop("event", None)
    if named is not None and event is not None and str(named) != event:
        raise ValidationError("event", named, f"conflicts with event {event!r} given separately")
    chosen = event if event is not None else named
    if chosen is None:
        raise ValidationError("event", None, "an event is required; built-in events: " + ", ".join(BUILTIN_SCHEMAS))
    return str(chosen), fields


def check_location(location: Any) -> str | None:
    """A payload value: text without control characters (it is stored as is)."""
    if location is None:
        return None
    if not isinstance(location, str) or re.search(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]", location) or not location:
        raise ValidationError("location", location, "expected non-empty text without control characters")
    if len(location.encode()) > MAX_LOCATION_BYTES:
        raise ValidationError("location", location, f"expected at most {MAX_LOCATION_BYTES} bytes (UTF-8)")
    return location


def check_ttl(ttl: Any) -> int | None:
    """A time to live in whole seconds, or None for keys that do not expire."""
    if ttl is None:
        return None
    try:
        seconds = int(str(ttl).strip()) if not isinstance(ttl, bool) else -1
    except ValueError:
        seconds = -1
    if not 0 < seconds <= MAX_TTL_SECONDS:
        raise ValidationError("ttl", ttl, f"expected a whole number of seconds from 1 to {MAX_TTL_SECONDS}")
    return seconds


def check_timeout(timeout: Any) -> float | None:
    """A wait's timeout in seconds (0 or less: look once), or None to wait without limit."""
    if timeout is None:
        return None
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and abs(timeout) <= MAX_TIMEOUT_SECONDS:
        return float(timeout)
    raise ValidationError("timeout", timeout, f"expected a number of seconds up to {MAX_TIMEOUT_SECONDS} (ten "
                          "years), or None to wait without limit")


__all__ = ["Comparison", "Request", "parse_pairs", "ready_prefix", "check_fields", "split_event", "check_location",
           "check_ttl", "check_timeout"]
