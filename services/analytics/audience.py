"""Audiences: set expressions over stages, tags and profile attributes.

    expr   := union
    union  := inter (('|' | '-') inter)*       left to right
    inter  := atom ('&' atom)*                 binds tighter than '|' and '-'
    atom   := term | '(' union ')'
    term   := name ':' value                   e.g. aipl:I, lifecycle:churned, follow:brand,
                                               city:Shanghai, gender:f, age_band:25-34,
                                               audience:vip-shoppers
            | 'paid_orders_' N 'd' cmp k        e.g. paid_orders_365d >= 2 (cmp: >=, > or =)
            | 'category:' id 'browsed' N 'd'   e.g. category:123 browsed 30d

`aipl:I & follow:brand - lifecycle:churned` is the customers in AIPL's I who follow the brand,
less the churned. A behaviour term counts over the N days ending with the instant's day
(`services.analytics.behaviour`): `paid_orders_365d >= 2` is who paid at least two orders not
refunded since, `category:123 browsed 30d` who browsed category 123.

A stage term names a model of the contract and one of its stages; a value may
be quoted ("New York") when it holds spaces or operators. `parse` gives a tree of `Term`s and
`Op`s, or an `ExpressionError` that says where (0-based character position) it went wrong.
Evaluating a tree is a fold over per-shard bitmaps (`evaluate`): the analytics service supplies
each term's members.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pyroaring import BitMap

from services.common.constants import MODEL_STAGES

__all__ = [
    "ATTRIBUTES",
    "BEHAVIOURS",
    "FOLLOW_TARGETS",
    "ExpressionError",
    "Node",
    "Op",
    "Term",
    "evaluate",
    "parse",
    "terms",
]

ATTRIBUTES = ("city", "gender", "age_band", "member_since")  # profile attributes (member_since: a year)
MAX_NESTING = 32  # parentheses within parentheses
FOLLOW_TARGETS = ("brand", "store", "official_account")  # a product's favourite is no tag
_KINDS = (*MODEL_STAGES, *ATTRIBUTES, "follow", "audience")
BEHAVIOURS = ("paid_orders", "category")  # kinds of the behaviour terms
MAX_DAYS = 3660  # the longest window a behaviour term may name
MAX_COUNT = 1000  # the largest count a behaviour term may compare with
MAX_BEHAVIOURS = 16  # behaviour terms in one expression: each reads a part per day of its window
_PAID = re.compile(r"paid_orders_(\d+)d(.*)", re.S)
_COMPARE = re.compile(r"(>=|>|=)(\d*)")
_DAYS = re.compile(r"(\d+)d")
_TOKEN = re.compile(r'\s*(?:(?P<op>[&|\-()])|(?P<word>(?:[^\s&|()"]|"[^"]*")+))')


class ExpressionError(ValueError):
    """A malformed expression; `position` is where (0-based) the problem lies."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.position = position


@dataclass(frozen=True, slots=True)
class Term:
    kind: str  # a model, an attribute, `follow`, `audience` or a behaviour
    value: str  # (paid_orders: the comparison, e.g. ">=", category: the category)
    position: int
    days: int = 0  # a behaviour's window
    count: int = 0  # paid_orders: the count compared with

    def __str__(self) -> str:
        if self.kind == "paid_orders":
            return f"paid_orders_{self.days}d {self.value} {self.count}"
        if self.kind == "category":
            return f"category:{_quote(self.value)} browsed {self.days}d"
        return f"{self.kind}:{_quote(self.value)}"


@dataclass(frozen=True, slots=True)
class Op:
    op: str  # '&', '|' or '-'
    left: Node
    right: Node

    def __str__(self) -> str:
        return f"({self.left} {self.op} {self.right})"


Node = Term | Op


def _quote(value: str) -> str:
    return f'"{value}"' if re.search(r'[\s&|()\-"]', value) or not value else value


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind 'op' or 'word', text, position) of each token; ExpressionError at a stray character."""
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        found = _TOKEN.match(text, pos)
        if found is None or found.end() == pos:
            raise ExpressionError(f"unexpected {text[pos]!r}", pos)
        start = found.start("op") if found.group("op") else found.start("word")
        if found.group("op"):
            out.append(("op", found.group("op"), start))
        else:
            out.append(("word", found.group("word"), start))
        pos = found.end()
    return out


def _days(text: str, position: int) -> int:
    if not text.isascii():
        raise ExpressionError("a window's days in the digits 0-9", position)
    if len(text) > 4 or not 1 <= int(text) <= MAX_DAYS:
        raise ExpressionError(f"a window of 1 to {MAX_DAYS} days", position)
    return int(text)


def _term_value(word: str, position: int, kind: str) -> str:
    """The value after `kind:` in `word`, unquoted; ExpressionError for an empty or half-quoted one."""
    value = word[len(kind) + 1 :]
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        value = value[1:-1]
    elif '"' in value:
        raise ExpressionError("a quoted value must be the whole value", position + len(kind) + 1)
    if not value:
        raise ExpressionError(f"{kind}: needs a value", position + len(kind) + 1)
    return value


def _term(word: str, position: int) -> Term:
    kind, sep, _ = word.partition(":")
    if not sep or not kind:
        raise ExpressionError(
            f"expected a term like aipl:I, city:Shanghai or paid_orders_30d >= 1, found {word!r}", position
        )
    if kind not in _KINDS:
        known = ", ".join((*_KINDS, "category (category:<id> browsed <N>d)", "paid_orders_<N>d"))
        raise ExpressionError(f"unknown term {kind!r}; one of {known}", position)
    value = _term_value(word, position, kind)
    if kind in MODEL_STAGES and value not in MODEL_STAGES[kind]:
        raise ExpressionError(
            f"{value!r} is no stage of {kind} ({', '.join(MODEL_STAGES[kind])})", position + len(kind) + 1
        )
    if kind == "follow" and value not in FOLLOW_TARGETS:
        raise ExpressionError(f"follow: one of {', '.join(FOLLOW_TARGETS)}", position + len(kind) + 1)
    if kind == "member_since" and not re.fullmatch(r"\d{4}", value):
        raise ExpressionError("member_since: a year, e.g. member_since:2024", position + len(kind) + 1)
    return Term(kind, value, position)


class _Parser:
    """Recursive descent over the tokens of one expression."""

    def __init__(self, text: str, max_terms: int) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0
        self.depth = 0  # parentheses open
        self.terms = 0
        self.behaviours = 0
        self.max_terms = max_terms

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def atom(self) -> Node:
        token = self.peek()
        if token is None:
            raise ExpressionError("the expression ends where a term was expected", len(self.text))
        kind, value, pos = token
        self.at += 1
        if kind == "word":
            self.terms += 1
            if self.terms > self.max_terms:
                raise ExpressionError(f"more than {self.max_terms} terms", pos)
            paid = _PAID.fullmatch(value)
            if paid is not None or value.startswith("category:"):
                self.behaviours += 1
                if self.behaviours > MAX_BEHAVIOURS:
                    raise ExpressionError(f"more than {MAX_BEHAVIOURS} behaviour terms", pos)
                return self.paid(paid, pos) if paid is not None else self.browsed(value, pos)
            return _term(value, pos)
        if value != "(":
            raise ExpressionError(f"expected a term, found {value!r}", pos)
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ExpressionError(f"parentheses nest more than {MAX_NESTING} deep", pos)
        inner = self.union()
        self.depth -= 1
        closing = self.peek()
        if closing is None or closing[1] != ")":
            raise ExpressionError("'(' is never closed", pos)
        self.at += 1
        return inner

    def word(self, what: str) -> tuple[str, int]:
        """The next token, a word; ExpressionError naming `what` was expected otherwise."""
        token = self.peek()
        if token is None or token[0] != "word":
            raise ExpressionError(f"expected {what}", len(self.text) if token is None else token[2])
        self.at += 1
        return token[1], token[2]

    def paid(self, found: re.Match[str], pos: int) -> Term:
        """`paid_orders_<N>d <cmp> <k>`, the comparison and count apart or joined to it."""
        days = _days(found.group(1), pos + len("paid_orders_"))
        rest, at = found.group(2), pos + found.start(2)
        if not rest:
            rest, at = self.word(f"a comparison (>=, > or =) after paid_orders_{days}d")
        cmp = _COMPARE.match(rest)
        if cmp is None:
            raise ExpressionError(f"expected >=, > or = (a count of paid orders), found {rest!r}", at)
        number, number_at = cmp.group(2), at + cmp.end(1)
        if cmp.end() != len(rest):
            raise ExpressionError(f"expected a whole number, found {rest[cmp.end(1) :]!r}", number_at)
        if not number:
            number, number_at = self.word("a count after the comparison")
        if not number.isdigit() or not number.isascii() or len(number) > 4 or int(number) > MAX_COUNT:
            raise ExpressionError(f"expected a whole number from 0 to {MAX_COUNT}, found {number!r}", number_at)
        count = int(number)
        if count == 0 and cmp.group(1) != ">":
            raise ExpressionError(
                "a count of 0 names everyone else: subtract the term instead, e.g. lifecycle:new - paid_orders_30d > 0",
                number_at,
            )
        return Term("paid_orders", cmp.group(1), pos, days=days, count=count)

    def browsed(self, word: str, pos: int) -> Term:
        """`category:<id> browsed <N>d`."""
        category = _term_value(word, pos, "category")
        verb, verb_at = self.word(f"`browsed` after {word} (category:<id> browsed <N>d)")
        if verb != "browsed":
            raise ExpressionError(f"expected `browsed` after {word}, found {verb!r}", verb_at)
        window, window_at = self.word("a window after browsed, e.g. 30d")
        found = _DAYS.fullmatch(window)
        if found is None:
            raise ExpressionError(f"expected a window in days, e.g. 30d, found {window!r}", window_at)
        return Term("category", category, pos, days=_days(found.group(1), window_at))

    def inter(self) -> Node:
        node = self.atom()
        while (token := self.peek()) is not None and token == ("op", "&", token[2]):
            self.at += 1
            node = Op("&", node, self.atom())
        return node

    def union(self) -> Node:
        node = self.inter()
        while (token := self.peek()) is not None and token[0] == "op" and token[1] in ("|", "-"):
            self.at += 1
            node = Op(token[1], node, self.inter())
        return node


def parse(text: str, max_terms: int = 64) -> Node:
    """The tree of `text`; ExpressionError naming the position of the first problem."""
    parser = _Parser(text, max_terms)
    if not parser.tokens:
        raise ExpressionError("an empty expression", 0)
    tree = parser.union()
    rest = parser.peek()
    if rest is not None:
        what = "')' without its '('" if rest[1] == ")" else f"expected an operator (& | -), found {rest[1]!r}"
        raise ExpressionError(what, rest[2])
    return tree


def terms(node: Node) -> list[Term]:
    """Every term of the tree, left to right."""
    if isinstance(node, Term):
        return [node]
    return [*terms(node.left), *terms(node.right)]


def evaluate(node: Node, members: Callable[[Term], BitMap]) -> BitMap:
    """The members of the expression, given each term's (on one shard)."""
    if isinstance(node, Term):
        return members(node)
    left, right = evaluate(node.left, members), evaluate(node.right, members)
    if node.op == "&":
        return left & right
    if node.op == "|":
        return left | right
    return left - right
