"""Tool registry: what an agent may call during a turn.

A tool is a function registered under a dotted name (``biz.version.resource.method`` for Feishu
data tools, short names for built-ins) with a JSON-schema for its arguments::

    from apps.runtime.tools import ToolContext, ToolError, tool

    @tool("feishu.v1.bitable.search", "Search records of a Feishu bitable", {
        "type": "object",
        "properties": {"app_token": {"type": "string"}, "query": {"type": "string"}},
        "required": ["app_token"],
    })
    def bitable_search(ctx: ToolContext, *, app_token: str, query: str = "") -> str:
        ...  # return text (or anything JSON-serialisable) for the model; raise ToolError(detail) on failure

Modules holding tools are listed in ``TOOL_MODULES`` (one line each) and imported on first use.
An agent offers the tools named in ``agent.tools``; names that are not registered are skipped with a
warning. Tool errors reach the user as AGENT_002 ``查询失败：{detail}`` (or the MCP_* code given).
"""

from apps.runtime.tools.registry import (
    TOOL_MODULES,
    Tool,
    ToolContext,
    ToolError,
    tool,
    tool_get,
    tool_run,
    tool_schemas,
    tools_for_agent,
)

__all__ = [
    "TOOL_MODULES",
    "Tool",
    "ToolContext",
    "ToolError",
    "tool",
    "tool_get",
    "tool_run",
    "tool_schemas",
    "tools_for_agent",
]
