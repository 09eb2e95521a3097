"""Built-in demo tools: the current time in the tenant's zone and a safe calculator."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from apps.runtime.tools.registry import ToolContext, ToolError, tool

WEEKDAYS = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]


@tool(
    "time.now",
    "Current date and time in the organisation's time zone (or a given IANA zone).",
    {
        "type": "object",
        "properties": {"timezone": {"type": "string", "description": "IANA zone, e.g. Asia/Shanghai"}},
    },
)
def time_now(ctx: ToolContext, *, timezone: str = "") -> str:
    try:
        zone = ZoneInfo(timezone) if timezone else ZoneInfo(str(ctx.tenant.time_zone))
    except (KeyError, ValueError):
        raise ToolError(f"未知时区 {timezone}")
    now = datetime.now(zone)
    return f"{now:%Y-%m-%d %H:%M:%S} {WEEKDAYS[now.weekday()]} ({zone.key})"


_OPS: dict[type[ast.AST], Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise ToolError("指数过大")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ToolError("只支持数字和 + - * / // % ** 运算")


@tool(
    "calc",
    "Evaluate an arithmetic expression exactly (numbers, + - * / // % ** and parentheses).",
    {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "e.g. (12.5 + 3) * 4"}},
        "required": ["expression"],
    },
)
def calc(ctx: ToolContext, *, expression: str) -> str:
    if len(expression) > 200:
        raise ToolError("表达式过长")
    try:
        tree = ast.parse(expression.replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError:
        raise ToolError("表达式无法解析")
    try:
        value = _eval(tree)
    except ZeroDivisionError:
        raise ToolError("除数为零")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{expression} = {value}"
