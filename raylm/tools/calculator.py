"""A calculator tool that evaluates arithmetic safely: a whitelist walk over Python's AST, never eval().

    calculate("(13 - 4) / 3")   -> "3"
    calculate("2 ** 10")        -> "1024"
    calculate("__import__('os')")  -> "error: only numbers and + - * / // % ** ( ) are allowed"

Only number literals, the four operations, floor division, modulo, powers with a
small exponent and unary signs are accepted; input length, exponent and result
size are bounded so a request cannot make the server compute for long. It never
raises and never answers inf or nan: overflow, literals past float range and
results past 1e18 are errors the model reads.
"""

from __future__ import annotations

import ast
import math
import operator

MAX_LENGTH = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e18

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    pass


def _value(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if not math.isfinite(node.value):  # 1e400 parses as inf
            raise CalculatorError("number out of range")
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponents above {MAX_EXPONENT} are not allowed")
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:  # float powers: 1e18 ** 64, 1e-320 ** -64
            raise CalculatorError("result out of range") from None
        if isinstance(result, complex) or not math.isfinite(result) or abs(result) > MAX_MAGNITUDE:
            raise CalculatorError("result out of range")
        return result
    raise CalculatorError("only numbers and + - * / // % ** ( ) are allowed")


def calculate(expression: str) -> str:
    """The result as text, or "error: ..." (a tool result the model reads, not an exception)."""
    expression = expression.strip().replace("^", "**").replace("\u00d7", "*").replace("\u00f7", "/")
    try:
        if not expression or len(expression) > MAX_LENGTH:
            raise CalculatorError(f"give an expression of 1 to {MAX_LENGTH} characters")
        try:
            tree = ast.parse(expression, mode="eval")
        except SyntaxError:
            raise CalculatorError("not an arithmetic expression") from None
        result = _value(tree.body)
    except CalculatorError as err:
        return f"error: {err}"
    except (MemoryError, RecursionError):  # "-" * 10**5 nesting cannot reach here (MAX_LENGTH): belt and braces
        return "error: expression too complex"
    if isinstance(result, float):
        if math.isfinite(result) and result == int(result):
            return str(int(result))
        return f"{result:.10g}"
    return str(result)
