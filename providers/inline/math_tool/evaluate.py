"""Evaluating a checked expression with sympy, in the math worker process (never in the server's).

The tree from :func:`~.expression.check` is interpreted node by node: numbers become sympy numbers
(decimals exactly, as rationals: ``0.1 + 0.2`` is ``3/10``), names become constants or symbols, calls go
to the sympy function the whitelist names. Nothing is compiled or ``eval``-ed. Two things are refused here
because only values show them: a power whose result would have more than ``max_digits`` digits (``9**9**9``
is refused before sympy computes it), and arithmetic on a list (``solve(...) * 10**9`` would be Python's list
repetition). Whatever else runs long or large is stopped by the worker's time and memory limits.

Answers are ``{"exact", "numeric"}`` strings, or ``{"refused": why}`` / ``{"failed": why}``.
"""

from __future__ import annotations

import ast
import importlib
import math
import sys
from collections.abc import Callable
from typing import Any

from .expression import CONSTANTS, FUNCTIONS, MAX_TREE_DEPTH, ExpressionRefused, Limits, check

# Beyond this a power of an irrational or symbolic-but-constant base (sqrt(2)**n, which sympy turns into
# 2**(n/2)) is refused: its size cannot be told cheaply, and nobody needs it.
MAX_CONSTANT_EXPONENT = 10_000


def open_engine(settings: dict[str, Any]) -> tuple[dict[str, Any], Callable[..., Any]]:
    """The worker's opener (see :mod:`llama_stack.providers.utils.process_worker`): limits, then sympy."""
    _limit_memory(settings.get("max_memory_mb"))
    limits = Limits(**settings["limits"])
    if hasattr(sys, "set_int_max_str_digits"):
        # Results are bounded by max_output_chars when shown; the default 4300-digit guard would only fail them.
        sys.set_int_max_str_digits(max(4300, limits.max_digits * 2))
    # Headroom for the evaluator's recursion (one frame per level, at most MAX_TREE_DEPTH) plus sympy's own.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), MAX_TREE_DEPTH + 1500))
    sympy = importlib.import_module("sympy")
    evaluator = Evaluator(sympy, limits, settings["max_output_chars"])

    def handle(job: Any, kind: str, payload: dict[str, Any], emit: Callable[[Any], None]) -> dict[str, Any]:
        return evaluator.answer(payload["expression"], payload["mode"], payload["precision"])

    return {"sympy": sympy.__version__}, handle


def _limit_memory(megabytes: int | None) -> None:
    if not megabytes:
        return
    try:
        import resource
    except ImportError:  # not a POSIX system: the time limit still applies
        return
    limit = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class Evaluator:
    def __init__(self, sympy: Any, limits: Limits, max_output_chars: int):
        self.sympy = sympy
        self.limits = limits
        self.max_output_chars = max_output_chars
        self.source = ""  # the expression being evaluated: decimals are read from it as written
        self.functions = {name: getattr(sympy, target) for name, target in FUNCTIONS.items()}
        self.constants = {name: getattr(sympy, target) for name, target in CONSTANTS.items()}
        self.operators: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
            ast.Add: lambda a, b: a + b,
            ast.Sub: lambda a, b: a - b,
            ast.Mult: lambda a, b: a * b,
            ast.Div: lambda a, b: a / b,
            ast.FloorDiv: lambda a, b: sympy.floor(a / b),
            ast.Mod: lambda a, b: sympy.Mod(a, b),
            ast.Pow: self._power,
            ast.BitXor: self._power,  # 2^10 means a power to whoever writes math
        }
        self.comparisons: dict[type[ast.cmpop], Any] = {
            ast.Eq: sympy.Eq,
            ast.NotEq: sympy.Ne,
            ast.Lt: sympy.Lt,
            ast.LtE: sympy.Le,
            ast.Gt: sympy.Gt,
            ast.GtE: sympy.Ge,
        }

    # ------------------------------------------------------------------------------------------ answer
    def answer(self, expression: str, mode: str, precision: int) -> dict[str, Any]:
        try:
            tree = check(expression, self.limits)  # again: the worker trusts nobody either
            self.source = expression.strip()
            value = self.value(tree.body)
            exact = self._shown(self.sympy.sstr(value)) if mode != "numeric" else None
            numeric = self._shown(self.sympy.sstr(self.numeric(value, precision))) if mode != "exact" else None
        except ExpressionRefused as exc:
            return {"refused": str(exc)}
        except MemoryError:
            return {"failed": "the computation ran out of memory"}
        except RecursionError:
            return {"failed": "the computation nested too deeply"}
        except Exception as exc:  # sympy's own refusals: not implemented, wrong arguments, ...
            return {"failed": f"{type(exc).__name__}: {exc}".strip(": ")[:1000]}
        return {"exact": exact, "numeric": numeric}

    def _shown(self, text: str) -> str:
        if len(text) <= self.max_output_chars:
            return text
        return f"{text[: self.max_output_chars]}... [{len(text) - self.max_output_chars} more characters]"

    def numeric(self, value: Any, precision: int) -> Any:
        """``value`` to ``precision`` significant digits, inside lists, tuples, dicts and sets too."""
        if isinstance(value, (list, tuple)):
            return type(value)(self.numeric(item, precision) for item in value)
        if isinstance(value, dict):
            return {key: self.numeric(item, precision) for key, item in value.items()}
        if isinstance(value, (set, frozenset)):
            return [self.numeric(item, precision) for item in value]
        if isinstance(value, bool):
            return value
        evalf = getattr(value, "evalf", None)
        return evalf(precision) if callable(evalf) else value

    # ------------------------------------------------------------------------------------------- nodes
    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.BinOp):
            left, right = self._operand(self.value(node.left)), self._operand(self.value(node.right))
            return self.operators[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp):
            operand = self._operand(self.value(node.operand))
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.Compare):
            compare = self.comparisons[type(node.ops[0])]
            return compare(self._operand(self.value(node.left)), self._operand(self.value(node.comparators[0])))
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)  # check() allows nothing else
            args = [self.value(arg) for arg in node.args]
            options = {str(k.arg): self.value(k.value) for k in node.keywords}
            return self.functions[node.func.id](*args, **options)
        if isinstance(node, ast.Name):
            if node.id in self.constants:
                return self.constants[node.id]
            return self.sympy.Symbol(node.id)
        if isinstance(node, ast.Constant):
            return self._number(node)
        if isinstance(node, ast.Tuple):
            return tuple(self.value(item) for item in node.elts)
        if isinstance(node, ast.List):
            return [self.value(item) for item in node.elts]
        raise ExpressionRefused(f"{type(node).__name__} is not allowed in a math expression")

    def _number(self, node: ast.Constant) -> Any:
        value = node.value
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return self.sympy.Integer(value)
        # Decimals as written, exactly: the float the parser made has already lost digits.
        text = (ast.get_source_segment(self.source, node) or repr(value)).replace("_", "")
        if isinstance(value, complex):
            return self.sympy.Rational(text.rstrip("jJ")) * self.sympy.I
        return self.sympy.Rational(text)

    def _operand(self, value: Any) -> Any:
        if isinstance(value, (self.sympy.Basic, self.sympy.MatrixBase)):
            return value
        kind = "a list" if isinstance(value, (list, tuple)) else type(value).__name__
        raise ExpressionRefused(f"arithmetic needs numbers or expressions, not {kind}")

    def _power(self, base: Any, exponent: Any) -> Any:
        if getattr(exponent, "is_Number", False) and not getattr(base, "free_symbols", True):
            self._bound_power(base, exponent)
        return base**exponent

    def _bound_power(self, base: Any, exponent: Any) -> None:
        """Refuse a constant power whose value would have more than max_digits digits."""
        if not exponent.is_finite:
            return  # 2**oo is oo: sympy's symbolic infinities cost nothing
        size = abs(float(exponent))
        if getattr(base, "is_Rational", False):
            p, q = abs(int(base.p)), abs(int(base.q))
            if max(p, q) <= 1 or size == 0:
                return
            digits = size * math.log10(max(p, q))
            if digits > self.limits.max_digits:
                raise ExpressionRefused(
                    f"the power {self._abbreviated(base)}**{self._abbreviated(exponent)} would have about "
                    f"{_rounded(digits)} digits; at most {self.limits.max_digits}"
                )
            return
        if getattr(base, "is_Float", False):
            return  # floating point: a fixed size, whatever the exponent
        if size > MAX_CONSTANT_EXPONENT:
            raise ExpressionRefused(
                f"the power {self._abbreviated(base)}**{self._abbreviated(exponent)} has an exponent beyond "
                f"{MAX_CONSTANT_EXPONENT}"
            )

    def _abbreviated(self, value: Any) -> str:
        if getattr(value, "is_Integer", False) and abs(int(value)).bit_length() > 64:
            return f"<a {len(str(abs(int(value))))}-digit number>"
        text = self.sympy.sstr(value)
        return text if len(text) <= 40 else text[:40] + "..."


def _rounded(digits: float) -> str:
    return f"{digits:.3g}" if digits < 1e15 else f"{digits:.1e}"
