"""Errors a turn can end with, and what the user sees for each (DESIGN §6)."""

from __future__ import annotations

USER_MESSAGES = {
    "AGENT_001": "思考超时，请简化问题重试",
    "AGENT_002": "查询失败：{detail}",
    # Not in the product plan's table yet: the model endpoint failed (primary and fallback).
    "AGENT_003": "模型服务暂时不可用，请稍后重试",
    # Not in the product plan's table yet: no agent answers this chat (binding missing/disabled).
    "AGENT_004": "当前会话未配置智能体，请联系管理员",
    "MCP_001": "数据获取失败，请稍后重试",
    "MCP_002": "未找到指定数据表",
    "MCP_003": "暂无权限访问该数据",
}


def user_message(code: str, **params: str) -> str:
    template = USER_MESSAGES.get(code, USER_MESSAGES["AGENT_003"])
    return template.format(**params) if params else template.replace("{detail}", "").rstrip("：")


class TurnError(Exception):
    """Ends a turn with a product error code; ``detail`` is for the transcript and logs."""

    def __init__(self, code: str, detail: str = "", *, user_text: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.user_text = user_text or user_message(code)


class TurnCancelled(Exception):
    """The turn was cancelled (/stop or the API) while it ran."""


class LLMTimeout(TurnError):
    def __init__(self, detail: str = "") -> None:
        super().__init__("AGENT_001", detail)
