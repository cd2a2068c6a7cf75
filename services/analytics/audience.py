"""Audiences: set expressions over stages, tags and profile attributes.

    expr   := union
    union  := inter (('|' | '-') inter)*       left to right
    inter  := atom ('&' atom)*                 binds tighter than '|' and '-'
    atom   := term | '(' union ')'
    term   := name ':' value                   e.g. aipl:I, lifecycle:churned, follow:brand,
                                               city:Shanghai, gender:f, age_band:25-34,
                                               audience:vip-shoppers

`aipl:I & follow:brand - lifecycle:churned` is the customers in AIPL's I who follow the brand,
less the churned. A stage term names a model of the contract and one of its stages; a value may
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

__all__ = ["ATTRIBUTES", "FOLLOW_TARGETS", "ExpressionError", "Node", "Op", "Term", "evaluate", "parse", "terms"]

ATTRIBUTES = ("city", "gender", "age_band", "member_since")  # profile attributes (member_since: a year)
MAX_NESTING = 32  # parentheses within parentheses
FOLLOW_TARGETS = ("brand", "store", "official_account")  # a product's favourite is no tag
_KINDS = (*MODEL_STAGES, *ATTRIBUTES, "follow", "audience")
_TOKEN = re.compile(r'\s*(?:(?P<op>[&|\-()])|(?P<word>(?:[^\s&|()"]|"[^"]*")+))')


class ExpressionError(ValueError):
    """A malformed expression; `position` is where (0-based) the problem lies."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.position = position


@dataclass(frozen=True, slots=True)
class Term:
    kind: str  # a model, an attribute, `follow` or `audience`
    value: str
    position: int

    def __str__(self) -> str:
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


def _term(word: str, position: int) -> Term:
    kind, sep, value = word.partition(":")
    if not sep or not kind:
        raise ExpressionError(f"expected a term like aipl:I or city:Shanghai, found {word!r}", position)
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        value = value[1:-1]
    elif '"' in value:
        raise ExpressionError("a quoted value must be the whole value", position + len(kind) + 1)
    if kind not in _KINDS:
        raise ExpressionError(f"unknown term {kind!r}; one of {', '.join(_KINDS)}", position)
    if not value:
        raise ExpressionError(f"{kind}: needs a value", position + len(kind) + 1)
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
