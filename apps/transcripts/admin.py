"""Read-only admin for transcripts: conversations rendered as a chat, turns, raw events, LLM calls."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from apps.transcripts.models import Conversation, InboundEvent, LLMCall, Message, Turn
from apps.transcripts.selectors import conversation_chat
from omniagent.admin.options import TenantScopedAdmin

_REDACTED_KEYS = frozenset({"token", "encrypt", "app_secret", "access_token", "refresh_token", "tenant_access_token"})


def _redact(value: Any) -> Any:
    # Stored events have their verification token removed at ingest; this is the second belt.
    if isinstance(value, dict):
        return {k: "***" if k in _REDACTED_KEYS else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _pretty_json(value: Any):
    return format_html('<pre class="oa-json">{}</pre>', json.dumps(value, indent=2, ensure_ascii=False))


class _TranscriptAdmin(TenantScopedAdmin):
    read_only = True  # transcripts are a record of what happened, never edited by hand


@admin.register(Conversation)
class ConversationAdmin(_TranscriptAdmin):
    list_display = ("__str__", "tenant", "origin", "bot", "agent", "chat_type", "user_open_id", "last_activity_at")
    list_filter = (
        "origin",
        "chat_type",
        ("tenant", admin.RelatedOnlyFieldListFilter),
        ("bot", admin.RelatedOnlyFieldListFilter),
        ("agent", admin.RelatedOnlyFieldListFilter),
    )
    list_select_related = ("tenant", "bot", "agent")
    search_fields = ("title", "key", "chat_id", "user_open_id")
    fields = (
        "tenant", "origin", "title", "key", "bot", "agent", "chat_type", "chat_id", "thread_id", "user_open_id",
        "user", "session_started_at", "summary", "last_activity_at", "created_at",
    )  # fmt: skip
    readonly_fields = fields

    def change_view(self, request: HttpRequest, object_id, form_url="", extra_context=None):
        conversation = self.get_object(request, object_id)  # scoped: 404 for missing or foreign
        extra_context = {**(extra_context or {}), "chat": conversation_chat(conversation=conversation)}
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(Message)
class MessageAdmin(_TranscriptAdmin):
    list_display = ("id", "role", "excerpt", "conversation", "tenant", "status", "feedback", "created_at")
    list_filter = ("role", "status", "feedback", ("tenant", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("tenant", "conversation")
    search_fields = ("content", "trace_id", "external_id", "sender_open_id")
    fields = (
        "tenant", "conversation", "turn", "role", "status", "content", "attachments", "mentions", "tool_calls",
        "tool_call_id", "tool_name", "sender_open_id", "bot", "external_id", "input_tokens", "output_tokens",
        "latency_ms", "error_code", "trace_id", "feedback", "feedback_by", "feedback_at", "created_at",
    )  # fmt: skip
    readonly_fields = fields

    @admin.display(description="Content")
    def excerpt(self, obj: Message) -> str:
        return obj.content[:80]


@admin.register(Turn)
class TurnAdmin(_TranscriptAdmin):
    list_display = (
        "__str__", "tenant", "conversation", "agent", "status", "first_token_ms", "duration_ms", "error_code",
        "created_at",
    )  # fmt: skip
    list_filter = ("status", "error_code", ("tenant", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("tenant", "conversation", "agent")
    search_fields = ("trace_id", "error_code", "error_detail")
    fields = (
        "tenant", "conversation", "agent", "status", "trace_id", "cancel_requested", "started_at", "finished_at",
        "first_token_ms", "duration_ms", "timings_display", "error_code", "error_detail", "created_at",
    )  # fmt: skip
    readonly_fields = fields

    @admin.display(description="Timings (ms)")
    def timings_display(self, obj: Turn):
        return _pretty_json(obj.timings)


@admin.register(InboundEvent)
class InboundEventAdmin(_TranscriptAdmin):
    list_display = ("event_id", "event_type", "tenant", "bot", "source", "status", "status_reason", "created_at")
    list_filter = ("status", "source", "event_type", ("tenant", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("tenant", "bot")
    search_fields = ("event_id", "trace_id", "status_reason")
    fields = (
        "tenant", "bot", "event_id", "event_type", "source", "status", "status_reason", "trace_id",
        "payload_display", "created_at",
    )  # fmt: skip
    readonly_fields = fields

    @admin.display(description="Payload")
    def payload_display(self, obj: InboundEvent):
        return _pretty_json(_redact(obj.payload))


@admin.register(LLMCall)
class LLMCallAdmin(_TranscriptAdmin):
    list_display = (
        "__str__", "tenant", "turn", "model", "input_tokens", "output_tokens", "first_token_ms", "latency_ms", "ok",
        "created_at",
    )  # fmt: skip
    list_filter = ("ok", "model", ("tenant", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("tenant", "turn")
    search_fields = ("trace_id", "model", "error")
    fields = (
        "tenant", "turn", "model", "input_tokens", "output_tokens", "first_token_ms", "latency_ms", "ok", "error",
        "trace_id", "created_at",
    )  # fmt: skip
    readonly_fields = fields
