"""Turn an `im.message.receive_v1` event into one inbound shape, whatever the Feishu message type.

The agent gets plain text; attachments keep their Feishu keys (downloadable later through
`FeishuClient.resource_download`), mentions keep their open_ids. The bot's own @mention placeholder is
stripped from the text; other mentions become "@Name"; @all (`@_all`) never counts as mentioning the bot.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

ALL_KEY = "@_all"
_SPACES = re.compile(r"[ \t]+")
_PLACEHOLDER = re.compile(r"@_user_\d+|@_all")


@dataclass
class InboundMessage:
    """A Feishu message as the rest of the platform sees it."""

    message_id: str
    chat_id: str
    chat_type: str  # "p2p" | "group"
    thread_id: str
    root_id: str
    parent_id: str
    message_type: str
    sender_open_id: str
    sender_type: str  # "user" | "app" | ...
    create_time_ms: int | None
    text: str
    attachments: list[dict[str, Any]] = field(default_factory=list)
    # [{"key": "@_user_1", "open_id": "ou_..", "name": "..", "is_bot": bool}], @all excluded
    mentions: list[dict[str, Any]] = field(default_factory=list)
    mentions_all: bool = False
    bot_mentioned: bool = False


def _load_content(raw: Any) -> Any:
    if isinstance(raw, dict | list):
        return raw
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return {"text": str(raw)}


def _clean(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return "\n".join(lines).strip()


def _mention_table(mentions: list[dict], bot_open_id: str) -> tuple[list[dict], dict[str, str], bool, bool]:
    """(mentions without @all, placeholder → replacement, bot mentioned, @all present)."""
    out: list[dict] = []
    replace: dict[str, str] = {ALL_KEY: "@all"}
    bot_mentioned = mentions_all = False
    for m in mentions or []:
        key = m.get("key") or ""
        ids = m.get("id") or {}
        open_id = ids.get("open_id", "") if isinstance(ids, dict) else ""
        name = m.get("name") or ""
        if key == ALL_KEY:
            mentions_all = True
            continue
        is_bot = bool(bot_open_id) and open_id == bot_open_id
        bot_mentioned = bot_mentioned or is_bot
        out.append({"key": key, "open_id": open_id, "name": name, "is_bot": is_bot})
        if key:
            replace[key] = "" if is_bot else f"@{name}" if name else ""
    return out, replace, bot_mentioned, mentions_all


def _substitute(text: str, replace: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: replace.get(m.group(0), ""), text)


def _post_body(content: dict) -> tuple[str, list]:
    # Received posts are {"title", "content"}; sent ones may be wrapped per locale ({"zh_cn": {...}}).
    if "content" not in content:
        for value in content.values():
            if isinstance(value, dict) and "content" in value:
                content = value
                break
    return content.get("title") or "", content.get("content") or []


def _post_to_text(content: dict, replace: dict[str, str], attachments: list[dict]) -> tuple[str, bool]:
    title, paragraphs = _post_body(content)
    lines: list[str] = [title] if title else []
    saw_all = False
    for paragraph in paragraphs:
        parts: list[str] = []
        for el in paragraph if isinstance(paragraph, list) else []:
            tag = el.get("tag")
            if tag in ("text", "md"):
                parts.append(_substitute(el.get("text", ""), replace))
            elif tag == "a":
                label, href = el.get("text", ""), el.get("href", "")
                parts.append(f"{label} ({href})" if label and href and label != href else label or href)
            elif tag == "at":
                user_id = el.get("user_id", "")
                if user_id in ("all", ALL_KEY):
                    saw_all = True
                    parts.append("@all")
                elif user_id in replace:
                    parts.append(replace[user_id])
                elif el.get("user_name"):
                    parts.append(f"@{el['user_name']}")
            elif tag == "img":
                attachments.append({"type": "image", "key": el.get("image_key", ""), "name": ""})
                parts.append("[image]")
            elif tag == "media":
                attachments.append(
                    {"type": "media", "key": el.get("file_key", ""), "name": "", "image_key": el.get("image_key", "")}
                )
                parts.append("[video]")
            elif tag == "emotion":
                parts.append(f":{el.get('emoji_type', '')}:")
            elif tag == "code_block":
                parts.append(f"\n```{el.get('language', '').lower()}\n{el.get('text', '')}\n```\n")
            elif tag == "hr":
                parts.append("\n---\n")
        lines.append("".join(parts))
    return "\n".join(lines), saw_all


def _card_texts(node: Any, out: list[str]) -> None:
    """Collect the human-readable strings of a card (titles, markdown, plain_text, button labels)."""
    if isinstance(node, dict):
        for key in ("title", "content", "text"):
            value = node.get(key)
            if isinstance(value, str) and value.strip():
                out.append(value.strip())
        for key, value in node.items():
            if isinstance(value, dict | list) and key not in ("value", "behaviors", "config"):
                _card_texts(value, out)
    elif isinstance(node, list):
        for item in node:
            _card_texts(item, out)


def content_to_text(
    message_type: str, content: dict, replace: dict[str, str], attachments: list[dict]
) -> tuple[str, bool]:
    """(plain text, whether an @all appeared) for one message type; appends attachments."""
    if message_type == "text":
        text = content.get("text", "")
        return _substitute(text, replace), ALL_KEY in text
    if message_type == "post":
        return _post_to_text(content, replace, attachments)
    if message_type == "image":
        attachments.append({"type": "image", "key": content.get("image_key", ""), "name": ""})
        return "[image]", False
    if message_type == "file":
        name = content.get("file_name", "")
        attachments.append({"type": "file", "key": content.get("file_key", ""), "name": name})
        return f"[file: {name}]" if name else "[file]", False
    if message_type == "audio":
        attachments.append(
            {"type": "audio", "key": content.get("file_key", ""), "name": "", "duration_ms": content.get("duration")}
        )
        return "[audio]", False
    if message_type == "media":
        name = content.get("file_name", "")
        attachments.append(
            {
                "type": "media",
                "key": content.get("file_key", ""),
                "name": name,
                "image_key": content.get("image_key", ""),
                "duration_ms": content.get("duration"),
            }
        )
        return f"[video: {name}]" if name else "[video]", False
    if message_type == "sticker":
        attachments.append({"type": "sticker", "key": content.get("file_key", ""), "name": ""})
        return "[sticker]", False
    if message_type == "interactive":
        texts: list[str] = []
        _card_texts(content, texts)
        body = "\n".join(dict.fromkeys(texts))  # drop repeats, keep order
        return f"[card]\n{body}" if body else "[card]", False
    if message_type == "share_chat":
        attachments.append({"type": "share_chat", "key": content.get("chat_id", ""), "name": ""})
        return f"[shared group: {content.get('chat_id', '')}]", False
    if message_type == "share_user":
        attachments.append({"type": "share_user", "key": content.get("user_id", ""), "name": ""})
        return f"[shared contact: {content.get('user_id', '')}]", False
    if message_type == "merge_forward":
        # The forwarded messages themselves are only available through the message API.
        return "[merged and forwarded messages]", False
    return f"[{message_type} message]", False


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def message_normalize(*, event: dict, bot_open_id: str) -> InboundMessage:
    """The `event` object of an im.message.receive_v1 callback → InboundMessage."""
    message = event.get("message") or {}
    sender = event.get("sender") or {}
    sender_ids = sender.get("sender_id") or {}
    message_type = message.get("message_type") or "text"
    content = _load_content(message.get("content"))
    if not isinstance(content, dict):
        content = {}
    mentions, replace, bot_mentioned, mentions_all = _mention_table(message.get("mentions") or [], bot_open_id)
    attachments: list[dict] = []
    text, saw_all = content_to_text(message_type, content, replace, attachments)
    if message_type == "merge_forward":
        attachments.append({"type": "merge_forward", "key": message.get("message_id", ""), "name": ""})
    chat_type = message.get("chat_type") or ""
    return InboundMessage(
        message_id=message.get("message_id", ""),
        chat_id=message.get("chat_id", ""),
        chat_type="p2p" if chat_type == "p2p" else "group",
        thread_id=message.get("thread_id") or "",
        root_id=message.get("root_id") or "",
        parent_id=message.get("parent_id") or "",
        message_type=message_type,
        sender_open_id=sender_ids.get("open_id", "") if isinstance(sender_ids, dict) else "",
        sender_type=sender.get("sender_type") or "",
        create_time_ms=_int_or_none(message.get("create_time")),
        text=_clean(text),
        attachments=attachments,
        mentions=mentions,
        mentions_all=mentions_all or saw_all,
        bot_mentioned=bot_mentioned,
    )


def needs_bot_open_id(event: dict) -> bool:
    """Whether telling the bot's mention apart requires its open_id (any non-@all mention present)."""
    mentions = (event.get("message") or {}).get("mentions") or []
    return any((m.get("key") or "") != ALL_KEY for m in mentions)
