"""The registry behind apps.runtime.tools (see the package docstring)."""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import structlog

from omniagent.gate import remote_wait

if TYPE_CHECKING:
    from apps.agents.models import Agent
    from apps.tenants.models import Tenant
    from apps.transcripts.models import Conversation

logger = structlog.get_logger(__name__)

TOOL_MODULES = [
    "apps.runtime.tools.builtin",
]


class ToolError(Exception):
    """A tool failed in a way the user may be told about (``detail`` is shown after 查询失败：)."""

    def __init__(self, detail: str, *, code: str = "AGENT_002") -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code


@dataclass
class ToolContext:
    """What a tool may use: who asks, in which tenant and conversation."""

    tenant: Tenant
    agent: Agent | None = None
    conversation: Conversation | None = None
    user_open_id: str = ""
    trace_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    func: Callable[..., Any]

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


_REGISTRY: dict[str, Tool] = {}


def tool(name: str, description: str, parameters: dict[str, Any] | None = None) -> Callable:
    """Decorator: register ``func(ctx, **arguments)`` as the tool ``name``."""

    def deco(func: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = Tool(name, description, parameters or {"type": "object", "properties": {}}, func)
        return func

    return deco


@cache
def _load() -> None:
    for module in TOOL_MODULES:
        importlib.import_module(module)


def tool_get(name: str) -> Tool | None:
    _load()
    return _REGISTRY.get(name)


def tools_for_agent(agent: Agent) -> list[Tool]:
    _load()
    found = []
    for name in agent.tools or []:
        if name in _REGISTRY:
            found.append(_REGISTRY[name])
        else:
            logger.warning("tool.unknown", tool=name, agent_id=agent.pk)
    return found


def tool_schemas(tools: list[Tool]) -> list[dict[str, Any]]:
    return [t.schema() for t in tools]


@dataclass
class ToolResult:
    ok: bool
    content: str  # what the model reads
    summary: str  # what the user sees
    error_code: str = ""
    duration_ms: int = 0


def tool_run(*, name: str, arguments_json: str, ctx: ToolContext, allowed: list[Tool]) -> ToolResult:
    """Run one tool call from the model; never raises (failures become an AGENT_002 result)."""
    from apps.runtime.errors import user_message

    started = time.monotonic()

    def fail(detail: str, code: str = "AGENT_002") -> ToolResult:
        text = user_message(code, detail=detail) if code == "AGENT_002" else user_message(code)
        return ToolResult(False, text, text, code, int((time.monotonic() - started) * 1000))

    found = next((t for t in allowed if t.name == name), None)
    if found is None:
        return fail(f"未知工具 {name}")
    try:
        arguments = json.loads(arguments_json or "{}")
        if not isinstance(arguments, dict):
            raise ValueError("arguments must be an object")
    except ValueError:
        return fail("参数格式错误")
    try:
        with remote_wait():  # tools wait on remote services (Feishu, MCP): not on the CPU slot
            value = found.func(ctx, **arguments)
    except ToolError as exc:
        logger.info("tool.failed", tool=name, detail=exc.detail, code=exc.code)
        return fail(exc.detail, exc.code)
    except TypeError as exc:
        logger.info("tool.bad_arguments", tool=name, error=str(exc))
        return fail("参数错误")
    except Exception:
        logger.exception("tool.crashed", tool=name)
        return fail("内部错误")
    content = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    summary = content if len(content) <= 120 else content[:117] + "…"
    return ToolResult(True, content, summary, "", int((time.monotonic() - started) * 1000))
