"""Checking a math expression before anything evaluates it: Python's own parser, then a whitelist walk.

The expression is parsed with :func:`ast.parse` (``mode="eval"``: one expression, no statements, no
``import``) and never compiled or ``eval``-ed. :func:`check` walks the tree and refuses every node that is
not arithmetic, a comparison, a call of a listed function, a number, a name or a list/tuple of those:
attribute access (``().__class__``), subscripts, strings, lambdas, comprehensions, ``:=``, f-strings,
``**kwargs`` and names starting with ``_`` (``__import__``) all stop here, with the reason. The length and
nesting depth are bounded before parsing (the tree's depth while walking it), so a hostile expression costs microseconds.

This module needs only the standard library: the server runs it before a worker (with sympy) is asked.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

# Names a call may use; FUNCTIONS maps each to the sympy attribute that implements it (and common aliases).
_FUNCTION_NAMES = (
    # elementary
    "sqrt",
    "cbrt",
    "root",
    "exp",
    "log",
    "sin",
    "cos",
    "tan",
    "cot",
    "sec",
    "csc",
    "asin",
    "acos",
    "atan",
    "atan2",
    "acot",
    "sinh",
    "cosh",
    "tanh",
    "asinh",
    "acosh",
    "atanh",
    "Abs",
    "sign",
    "floor",
    "ceiling",
    "re",
    "im",
    "arg",
    "conjugate",
    "Min",
    "Max",
    "Mod",
    "gcd",
    "lcm",
    "factorial",
    "binomial",
    "gamma",
    "fibonacci",
    "isprime",
    "factorint",
    "prime",
    "nextprime",
    "divisors",
    "totient",
    "Rational",
    # calculus and algebra
    "integrate",
    "diff",
    "limit",
    "series",
    "summation",
    "product",
    "solve",
    "solveset",
    "nsolve",
    "simplify",
    "expand",
    "factor",
    "apart",
    "together",
    "cancel",
    "trigsimp",
    "expand_trig",
    "nsimplify",
    "collect",
    "roots",
    "Poly",
    "degree",
    # relations, logic, matrices
    "Eq",
    "Ne",
    "Lt",
    "Le",
    "Gt",
    "Ge",
    "And",
    "Or",
    "Not",
    "Matrix",
    "det",
    "transpose",
    "eye",
    "zeros",
    "ones",
    "Interval",
)
FUNCTIONS: dict[str, str] = {name: name for name in _FUNCTION_NAMES} | {
    "ln": "log",
    "abs": "Abs",
    "arcsin": "asin",
    "arccos": "acos",
    "arctan": "atan",
    "ceil": "ceiling",
}

# Names that are values, not symbols.
CONSTANTS: dict[str, str] = {
    "pi": "pi",
    "E": "E",
    "e": "E",
    "I": "I",
    "oo": "oo",
    "inf": "oo",
    "infinity": "oo",
    "nan": "nan",
    "zoo": "zoo",
}

# Keyword arguments a call may pass (sympy options such as solve(..., dict=True)); anything else is refused.
KEYWORDS = frozenset({"dict", "evaluate", "rational", "deep", "force", "manual", "modulus", "check", "real"})

_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BitXor)
_UNARY = (ast.UAdd, ast.USub)
_COMPARISONS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_SYMBOL = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
MAX_NAME_LENGTH = 32
# The evaluator recurses once per level of the tree: a sum of 500 terms is 500 levels (no brackets), fine;
# this bound keeps any configured expression length well inside the worker's recursion limit.
MAX_TREE_DEPTH = 600
_EXPONENT = re.compile(r"[eE]([+-]?\d+)")
# A lone '=' (not ==, <=, >=, != or a keyword argument's, which parse): someone wrote an equation.
_ASSIGNMENT = re.compile(r"(?<![=<>!])=(?!=)")
_EQUATION_HINT = "; write an equation as Eq(left, right), e.g. solve(Eq(x**2, 4), x)"

# What each refused node is, in the words of someone writing math.
_REFUSED = {
    ast.Attribute: "attribute access ('.' after a value)",
    ast.Subscript: "subscripts ('[...]' after a value)",
    ast.Lambda: "lambda",
    ast.IfExp: "conditional expressions (if/else)",
    ast.NamedExpr: "assignment (':=')",
    ast.JoinedStr: "strings",
    ast.FormattedValue: "strings",
    ast.Dict: "dicts ('{...}')",
    ast.Set: "sets ('{...}')",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.Starred: "unpacking ('*')",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.BoolOp: "'and'/'or' (use And(a, b) / Or(a, b))",
    ast.Slice: "slices",
}


class ExpressionRefused(ValueError):
    """The expression is not one this tool evaluates; the message says why, for the person or model who wrote it."""


@dataclass(frozen=True)
class Limits:
    """Bounds checked before and during evaluation (from the provider's config)."""

    max_length: int = 1000
    max_depth: int = 40  # brackets: (), [] and calls

    max_digits: int = 10_000


def check(expression: str, limits: Limits) -> ast.Expression:
    """The parsed expression, once every part of it is allowed; :class:`ExpressionRefused` otherwise."""
    if len(expression) > limits.max_length:
        raise ExpressionRefused(f"the expression has {len(expression)} characters; at most {limits.max_length}")
    if not expression.strip():
        raise ExpressionRefused("the expression is empty")
    # The parser nests ~200 brackets before it gives up; a tighter bound first keeps its work trivial.
    brackets = _bracket_depth(expression)
    if brackets > limits.max_depth:
        raise ExpressionRefused(f"the expression nests brackets {brackets} deep; at most {limits.max_depth}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        hint = _EQUATION_HINT if _ASSIGNMENT.search(expression) else ""
        raise ExpressionRefused(f"the expression does not parse: {_syntax_message(exc)}{hint}") from None
    _Walker(expression.strip(), limits).check(tree)
    return tree


def _bracket_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth = max(0, depth - 1)
    return deepest


def _syntax_message(exc: Exception) -> str:
    if isinstance(exc, SyntaxError):
        where = f" at column {exc.offset}" if exc.offset else ""
        return f"{exc.msg}{where}"
    return str(exc) or type(exc).__name__


class _Walker:
    """Checks every node, iteratively (a deep tree cannot exhaust the stack), bounding the tree's depth."""

    def __init__(self, source: str, limits: Limits):
        self.source = source
        self.limits = limits

    def check(self, tree: ast.Expression) -> None:
        pending: list[tuple[ast.AST, int]] = [(tree.body, 1)]
        while pending:
            node, depth = pending.pop()
            if depth > MAX_TREE_DEPTH:
                raise ExpressionRefused(f"the expression chains more than {MAX_TREE_DEPTH} operations into each other")
            pending.extend((child, depth + 1) for child in self._children(node))

    def _children(self, node: ast.AST) -> list[ast.AST]:
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, _OPERATORS):
                raise ExpressionRefused(f"the operator {_operator(node.op)} is not arithmetic")
            return [node.left, node.right]
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, _UNARY):
                raise ExpressionRefused(f"the operator {_operator(node.op)} is not arithmetic (use Not(a) for 'not')")
            return [node.operand]
        if isinstance(node, ast.Compare):
            if len(node.ops) != 1 or not isinstance(node.ops[0], _COMPARISONS):
                raise ExpressionRefused("a comparison compares two values (chain them with And(a < b, b < c))")
            return [node.left, *node.comparators]
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Name):
            self._name(node.id, called=False)
            return []
        if isinstance(node, ast.Constant):
            self._constant(node)
            return []
        if isinstance(node, (ast.Tuple, ast.List)):
            return list(node.elts)
        what = _REFUSED.get(type(node), type(node).__name__)
        raise ExpressionRefused(f"{what} is not allowed in a math expression")

    def _call(self, node: ast.Call) -> list[ast.AST]:
        if not isinstance(node.func, ast.Name):
            what = _REFUSED.get(type(node.func))
            if what is not None:  # (lambda: 1)(), ().__class__(): say what the callee is
                raise ExpressionRefused(f"{what} is not allowed in a math expression")
            raise ExpressionRefused("only the listed functions can be called, by name, e.g. sqrt(8)")
        self._name(node.func.id, called=True)
        for keyword in node.keywords:
            if keyword.arg is None:
                raise ExpressionRefused("unpacking ('**') is not allowed in a math expression")
            if keyword.arg not in KEYWORDS:
                raise ExpressionRefused(
                    f"{node.func.id}() takes no option {keyword.arg!r} here; options: {', '.join(sorted(KEYWORDS))}"
                )
        return [*node.args, *(keyword.value for keyword in node.keywords)]

    def _name(self, name: str, *, called: bool) -> None:
        if name.startswith("_") or "__" in name:
            raise ExpressionRefused(f"the name {name!r} is not allowed (names may not start with '_' or hold '__')")
        if called:
            if name not in FUNCTIONS:
                raise ExpressionRefused(f"{name}() is not a function this tool knows; it knows {function_list()}")
            return
        if name in FUNCTIONS and name not in CONSTANTS:
            raise ExpressionRefused(f"{name} is a function: call it, e.g. {name}(x)")
        if len(name) > MAX_NAME_LENGTH or not _SYMBOL.match(name):
            raise ExpressionRefused(
                f"the name {name[:MAX_NAME_LENGTH]!r} is not a symbol: letters, digits and '_', "
                f"at most {MAX_NAME_LENGTH} characters"
            )

    def _constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool) or value is None or value is Ellipsis:
            if isinstance(value, bool):
                return
            raise ExpressionRefused(f"{value!r} is not a number")
        if isinstance(value, (str, bytes)):
            raise ExpressionRefused("strings are not allowed in a math expression")
        if isinstance(value, int):
            if value.bit_length() > self.limits.max_digits * 4:
                raise ExpressionRefused(f"a number has more than {self.limits.max_digits} digits")
            return
        if isinstance(value, (float, complex)):
            text = ast.get_source_segment(self.source, node) or ""
            exponent = _EXPONENT.search(text)
            if exponent and abs(int(exponent.group(1))) > self.limits.max_digits:
                raise ExpressionRefused(f"the number {text} has an exponent beyond {self.limits.max_digits} digits")
            return
        raise ExpressionRefused(f"{type(value).__name__} values are not allowed")


def _operator(op: ast.AST) -> str:
    return {
        ast.BitAnd: "'&'",
        ast.BitOr: "'|'",
        ast.LShift: "'<<'",
        ast.RShift: "'>>'",
        ast.MatMult: "'@'",
        ast.Invert: "'~'",
        ast.Not: "'not'",
    }.get(type(op), type(op).__name__)


def function_list() -> str:
    return ", ".join(sorted(FUNCTIONS, key=str.lower))
