"""The spec grammar: config strings that name parts, parsed without ``eval``.

Grammar (keyword-only, call style, nestable)::

    spec   := NAME [ "(" [ kwarg { "," kwarg } [","] ] ")" ]
    kwarg  := KEY "=" value
    value  := spec | NUMBER | "true" | "false" | "none" | STRING
            | "[" [ value { "," value } [","] ] "]"          # list
            | "(" [ value "," [ value { "," value } [","] ] ] ")"   # tuple: (3, 3, 1), (3,), ()
    NAME, KEY := [a-z][a-z0-9_]*

Example:
    >>> s = parse_spec("nmf(rank=1, update=hals, eps=1e-6, kernel=(3, 3, 1))")
    >>> s.name, s.kwargs["rank"], s.kwargs["update"]
    ('nmf', 1, Spec(name='hals'))
    >>> str(s)
    'nmf(rank=1, update=hals, eps=1e-06, kernel=(3, 3, 1))'
    >>> parse_spec(str(s)) == s
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Spec",
    "SpecError",
    "SpecKeywordError",
    "parse_spec",
    "format_value",
    "spec_depth",
    "NAME_RE",
    "MAX_DEPTH",
]

NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NUMBER_SPAN_RE = re.compile(r"[+-]?[.0-9](?:[eE][+-]|[0-9a-zA-Z_.])*")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYWORDS = {"true": True, "false": False, "none": None}
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t"}
#: The deepest nesting of parts, lists and tuples a spec may have (real specs nest a few levels;
#: the limit keeps parsing, validation and formatting far from Python's recursion limit).
MAX_DEPTH = 64


class SpecError(ValueError):
    """A malformed or invalid spec: the message shows the text with a caret under the problem.

    Attributes:
        message: what is wrong (and the fix, when one is known).
        text: the spec text (None when there is none, e.g. a ``Spec`` built in Python).
        column: 0-based column of the offending character in ``text``.
    """

    def __init__(self, message: str, text: str | None = None, column: int = 0):
        self.message = message
        self.text = text
        self.column = max(0, min(column, len(text or "")))
        if text is not None:
            printable = text.replace("\n", " ").replace("\t", " ")
            full = f"{message}\n  {printable}\n  {' ' * self.column}^"
        else:
            full = message
        super().__init__(full)

    def __reduce__(self):
        return (type(self), (self.message, self.text, self.column))


class SpecKeywordError(SpecError, TypeError):
    """An unknown or misplaced keyword in a spec (also a ``TypeError``, like Python's own)."""


@dataclass(frozen=True)
class _Where:
    """Columns of a parsed spec's pieces in its source text (not part of equality)."""

    text: str
    name: int
    keys: Mapping[str, int]
    values: Mapping[str, int]


@dataclass(frozen=True, eq=True)
class Spec:
    """A parsed spec: a part name and keyword arguments (values may be nested specs).

    Attributes:
        name: the part name.
        kwargs: keyword arguments, in the order written.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    where: _Where | None = field(default=None, compare=False, repr=False)

    __hash__ = None  # kwargs are mutable containers

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME_RE.fullmatch(self.name):
            raise SpecError(f"a spec name must match [a-z][a-z0-9_]*, got {self.name!r}")
        if self.name in _KEYWORDS:
            raise SpecError(f"{self.name!r} is a value keyword and cannot name a part")
        bad = [k for k in self.kwargs if not isinstance(k, str) or not NAME_RE.fullmatch(k)]
        if bad:
            raise SpecError(f"spec keywords must match [a-z][a-z0-9_]*, got {bad[0]!r}")

    def __str__(self) -> str:
        if not self.kwargs:
            return self.name
        args = ", ".join(f"{k}={format_value(v)}" for k, v in self.kwargs.items())
        return f"{self.name}({args})"

    def __repr__(self) -> str:
        if not self.kwargs:
            return f"Spec(name={self.name!r})"
        return f"Spec(name={self.name!r}, kwargs={self.kwargs!r})"

    def replace(self, **kwargs: Any) -> Spec:
        """A copy with ``kwargs`` merged in (``None`` values are dropped, timm-style)."""
        merged = {**self.kwargs, **{k: v for k, v in kwargs.items() if v is not None}}
        return Spec(self.name, merged)

    def error(self, message: str, key: str | None = None, at: str = "name", cls=SpecError):
        """A :class:`SpecError` pointing at this spec's name, or at ``key``'s key or value."""
        where = self.where
        if where is None:  # built in Python: point into the formatted text
            reparsed = parse_spec(str(self))
            where = reparsed.where
        column = where.name
        if key is not None:
            column = (where.keys if at == "key" else where.values).get(key, where.name)
        return cls(message, where.text, column)


def spec_depth(value: Any) -> int:
    """How deeply parts, lists, tuples and dicts nest in ``value`` (iterative: any depth).

    Args:
        value: a :class:`Spec` or a spec value.

    Returns:
        0 for a plain value, 1 for a spec without nested containers, and so on.
    """
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Spec):
            children = item.kwargs.values()
        elif isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def format_value(value: Any) -> str:
    """Format a spec value in the grammar (the inverse of parsing it).

    Args:
        value: a ``Spec``, number, bool, None, string, list or tuple of these.

    Returns:
        The value's text, e.g. ``'[1, (2,), nmf(rank=1)]'``.

    Raises:
        ValueError: a value the grammar cannot express (NaN/inf, an arbitrary object).
    """
    if isinstance(value, Spec):
        return str(value)
    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"spec values must be finite numbers, got {value!r}")
        return repr(float(value))
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        escaped = escaped.replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, tuple):
        if len(value) == 1:
            return f"({format_value(value[0])},)"
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    raise ValueError(f"cannot write {type(value).__name__} value {value!r} in a spec")


class _Parser:
    """Recursive-descent parser over the raw text (no tokenizer pass needed)."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.depth = 0

    def enter(self, start: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(
                f"the spec nests deeper than {MAX_DEPTH} levels of parts, lists and tuples: flatten it",
                start,
            )

    def fail(self, message: str, column: int | None = None) -> SpecError:
        return SpecError(message, self.text, self.pos if column is None else column)

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str, context: str) -> None:
        if self.peek() != char:
            found = repr(self.peek()) if self.peek() else "end of text"
            raise self.fail(f"expected {char!r} {context}, found {found}")
        self.pos += 1

    def name(self, what: str) -> tuple[str, int]:
        self.skip()
        start = self.pos
        match = _WORD_RE.match(self.text, self.pos)
        if not match:
            found = repr(self.peek()) if self.peek() else "end of text"
            raise self.fail(f"expected {what}, found {found}")
        word = match.group()
        if not NAME_RE.fullmatch(word):
            hint = f"; did you mean {word.lower()!r}?" if NAME_RE.fullmatch(word.lower()) else ""
            raise self.fail(f"{what} {word!r} must match [a-z][a-z0-9_]* (lower case){hint}")
        self.pos = match.end()
        return word, start

    def spec(self) -> Spec:
        name, start = self.name("a part name")
        if name in _KEYWORDS:
            raise self.fail(f"{name!r} is a value keyword, not a part name", start)
        return self.call(name, start)

    def call(self, name: str, start: int) -> Spec:
        kwargs: dict[str, Any] = {}
        keys: dict[str, int] = {}
        values: dict[str, int] = {}
        if self.peek() == "(":
            self.enter(self.pos)
            self.pos += 1
            while self.peek() != ")":
                if not self.peek():
                    raise self.fail(f"unclosed '(' of {name!r}: add ')'", start + len(name))
                key_start = self.pos
                match = _WORD_RE.match(self.text, self.pos)
                after = match.end() if match else self.pos
                while after < len(self.text) and self.text[after] in " \t\r\n":
                    after += 1
                if not match or after >= len(self.text) or self.text[after] != "=":
                    raise self.fail(
                        f"positional arguments are not accepted in {name}(...): "
                        "write every argument as key=value",
                        key_start,
                    )
                key, key_start = self.name("a keyword")
                if key in kwargs:
                    raise self.fail(f"duplicate keyword {key!r} in {name}(...)", key_start)
                self.expect("=", f"after keyword {key!r}")
                self.skip()
                values[key] = self.pos
                kwargs[key] = self.value()
                keys[key] = key_start
                if self.peek() == ",":
                    self.pos += 1
                elif self.peek() != ")":
                    found = repr(self.peek()) if self.peek() else "end of text"
                    raise self.fail(f"expected ',' or ')' in {name}(...), found {found}")
            self.pos += 1
            self.depth -= 1
        return Spec(name, kwargs, _Where(self.text, start, keys, values))

    def sequence(self, close: str, what: str) -> tuple[list[Any], bool]:
        open_at = self.pos - 1
        self.enter(open_at)
        items: list[Any] = []
        trailing_comma = False
        while self.peek() != close:
            if not self.peek():
                raise self.fail(f"unclosed {what}: add {close!r}", open_at)
            items.append(self.value())
            trailing_comma = False
            if self.peek() == ",":
                self.pos += 1
                trailing_comma = True
            elif self.peek() != close:
                found = repr(self.peek()) if self.peek() else "end of text"
                raise self.fail(f"expected ',' or {close!r} in {what}, found {found}")
        self.pos += 1
        self.depth -= 1
        return items, trailing_comma

    def value(self) -> Any:
        char = self.peek()
        start = self.pos
        if not char:
            raise self.fail("expected a value, found end of text")
        if char == "[":
            self.pos += 1
            return self.sequence("]", "list")[0]
        if char == "(":
            self.pos += 1
            items, trailing = self.sequence(")", "tuple")
            if len(items) == 1 and not trailing:
                raise self.fail("a one-element tuple needs a trailing comma, e.g. (3,)", start)
            return tuple(items)
        if char in "\"'":
            return self.string(char)
        if char.isdigit() or char in "+-.":
            match = _NUMBER_SPAN_RE.match(self.text, self.pos)
            span = match.group() if match else char
            if not _NUMBER_RE.fullmatch(span):
                raise self.fail(f"bad number {span!r}")
            self.pos += len(span)
            if any(c in span for c in ".eE"):
                number = float(span)
                if not math.isfinite(number):
                    raise self.fail(f"number {span!r} is out of the floating-point range")
                return number
            return int(span)
        name, name_start = self.name("a value")
        if name in _KEYWORDS:
            if self.peek() == "(":
                raise self.fail(f"{name!r} is a value keyword, not a part name", name_start)
            return _KEYWORDS[name]
        return self.call(name, name_start)

    def string(self, quote: str) -> str:
        start = self.pos
        self.pos += 1
        out = []
        while True:
            if self.pos >= len(self.text):
                raise self.fail(f"unterminated string: add the closing {quote}", start)
            char = self.text[self.pos]
            if char == quote:
                self.pos += 1
                return "".join(out)
            if char == "\\":
                nxt = self.text[self.pos + 1 : self.pos + 2]
                if nxt not in _ESCAPES:
                    raise self.fail(f"bad escape '\\{nxt}' in string (use \\\\ for a backslash)")
                out.append(_ESCAPES[nxt])
                self.pos += 2
                continue
            out.append(char)
            self.pos += 1


def parse_spec(text: str | Spec) -> Spec:
    """Parse a spec string into a :class:`Spec`. Never evaluates code.

    Args:
        text: e.g. ``"factorizer(mixer=nmf(rank=1, iters=5), mlp_ratio=2)"``; a :class:`Spec`
            is returned unchanged.

    Returns:
        The parsed spec; ``parse_spec(str(s)) == s``.

    Raises:
        SpecError: malformed text, with the column and a caret under the problem.
    """
    if isinstance(text, Spec):
        return text
    if not isinstance(text, str):
        raise SpecError(f"a spec must be a string, got {type(text).__name__}")
    parser = _Parser(text)
    if not parser.peek():
        raise SpecError("empty spec: write a part name, e.g. 'nmf(rank=1)'", text, 0)
    spec = parser.spec()
    if parser.peek():
        found = parser.peek()
        hint = " (unbalanced parentheses?)" if found in ")]" else ""
        raise parser.fail(f"unexpected {found!r} after the end of the spec{hint}")
    return spec
