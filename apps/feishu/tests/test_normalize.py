"""Normalization of every Feishu message type into the inbound shape the agent sees."""

from __future__ import annotations

import json

import pytest

from apps.feishu.normalize import message_normalize, needs_bot_open_id
from tests.fakes.feishu_ws import mention, message_event

BOT = "ou_bot_self"


def normalize(message_type: str, content: dict, **kwargs):
    event = message_event(app_id="cli_x", message_type=message_type, content=content, **kwargs)["event"]
    return message_normalize(event=event, bot_open_id=BOT)


def test_it_strips_the_bot_mention_and_names_other_people():
    msg = normalize(
        "text",
        {"text": "@_user_1  请帮 @_user_2 总结一下"},
        chat_type="group",
        mentions=[mention("@_user_1", BOT, "案件助手"), mention("@_user_2", "ou_zhang", "张三")],
    )
    assert msg.text == "请帮 @张三 总结一下"
    assert msg.bot_mentioned is True
    assert msg.mentions == [
        {"key": "@_user_1", "open_id": BOT, "name": "案件助手", "is_bot": True},
        {"key": "@_user_2", "open_id": "ou_zhang", "name": "张三", "is_bot": False},
    ]
    assert (msg.chat_type, msg.sender_open_id, msg.sender_type) == ("group", "ou_user_1", "user")


def test_it_does_not_treat_at_all_as_mentioning_the_bot():
    msg = normalize(
        "text", {"text": "@_all 明天放假"}, chat_type="group", mentions=[{"key": "@_all", "id": {}, "name": "所有人"}]
    )
    assert msg.bot_mentioned is False
    assert msg.mentions_all is True
    assert msg.mentions == []
    assert msg.text == "@all 明天放假"


def test_it_does_not_count_another_users_mention_as_the_bots():
    msg = normalize(
        "text", {"text": "@_user_1 你看下"}, chat_type="group", mentions=[mention("@_user_1", "ou_someone", "李四")]
    )
    assert msg.bot_mentioned is False
    assert msg.text == "@李四 你看下"


def test_it_flattens_a_rich_text_post_with_mentions_links_images_and_code():
    content = {
        "title": "周报",
        "content": [
            [{"tag": "at", "user_id": "@_user_1", "user_name": "案件助手"}, {"tag": "text", "text": " 总结本周进展"}],
            [
                {"tag": "a", "href": "https://example.com/case/42", "text": "案件 42"},
                {"tag": "text", "text": " 已结案"},
            ],
            [{"tag": "img", "image_key": "img_v3_abc"}],
            [{"tag": "code_block", "language": "PYTHON", "text": "print(1)"}],
            [{"tag": "emotion", "emoji_type": "SMILE"}],
        ],
    }
    msg = normalize("post", content, chat_type="group", mentions=[mention("@_user_1", BOT, "案件助手")])
    assert msg.bot_mentioned is True
    assert msg.text.splitlines() == [
        "周报",
        "总结本周进展",
        "案件 42 (https://example.com/case/42) 已结案",
        "[image]",
        "",
        "```python",
        "print(1)",
        "```",
        "",
        ":SMILE:",
    ]
    assert msg.attachments == [{"type": "image", "key": "img_v3_abc", "name": ""}]


def test_it_reads_a_locale_wrapped_post():
    msg = normalize("post", {"zh_cn": {"title": "", "content": [[{"tag": "text", "text": "你好"}]]}})
    assert msg.text == "你好"


def test_it_marks_at_all_inside_a_post():
    msg = normalize(
        "post", {"title": "", "content": [[{"tag": "at", "user_id": "all"}, {"tag": "text", "text": " 开会"}]]}
    )
    assert msg.mentions_all is True
    assert msg.bot_mentioned is False
    assert msg.text == "@all 开会"


@pytest.mark.parametrize(
    ("message_type", "content", "text", "attachments"),
    [
        ("image", {"image_key": "img_v3_0a1"}, "[image]", [{"type": "image", "key": "img_v3_0a1", "name": ""}]),
        (
            "file",
            {"file_key": "file_v3_0b2", "file_name": "合同.pdf"},
            "[file: 合同.pdf]",
            [{"type": "file", "key": "file_v3_0b2", "name": "合同.pdf"}],
        ),
        (
            "audio",
            {"file_key": "file_v3_aud", "duration": 3200},
            "[audio]",
            [{"type": "audio", "key": "file_v3_aud", "name": "", "duration_ms": 3200}],
        ),
        (
            "media",
            {"file_key": "file_v3_vid", "image_key": "img_v3_cover", "file_name": "demo.mp4", "duration": 9000},
            "[video: demo.mp4]",
            [
                {
                    "type": "media",
                    "key": "file_v3_vid",
                    "name": "demo.mp4",
                    "image_key": "img_v3_cover",
                    "duration_ms": 9000,
                }
            ],
        ),
        ("sticker", {"file_key": "v2_sticker"}, "[sticker]", [{"type": "sticker", "key": "v2_sticker", "name": ""}]),
        (
            "share_chat",
            {"chat_id": "oc_shared"},
            "[shared group: oc_shared]",
            [{"type": "share_chat", "key": "oc_shared", "name": ""}],
        ),
        (
            "share_user",
            {"user_id": "ou_card_user"},
            "[shared contact: ou_card_user]",
            [{"type": "share_user", "key": "ou_card_user", "name": ""}],
        ),
    ],
)
def test_it_keeps_attachment_keys_types_and_names(message_type, content, text, attachments):
    msg = normalize(message_type, content)
    assert msg.message_type == message_type
    assert msg.text == text
    assert msg.attachments == attachments


def test_it_extracts_the_text_of_an_interactive_card():
    card = {
        "title": "审批通知",
        "elements": [
            [{"tag": "text", "text": "请审批 案件 42 的费用"}],
            [{"tag": "button", "text": "同意", "value": {"secret": "not shown"}}],
        ],
    }
    msg = normalize("interactive", card)
    assert msg.text == "[card]\n审批通知\n请审批 案件 42 的费用\n同意"
    assert "not shown" not in msg.text


def test_it_marks_a_merged_forward_for_later_expansion():
    msg = normalize("merge_forward", {"content": "Merged and Forwarded Message"}, message_id="om_merged")
    assert msg.text == "[merged and forwarded messages]"
    assert msg.attachments == [{"type": "merge_forward", "key": "om_merged", "name": ""}]


def test_it_describes_types_it_does_not_know():
    msg = normalize("location", {"name": "国贸", "latitude": "39.9", "longitude": "116.4"})
    assert msg.text == "[location message]"


def test_it_reads_ids_threads_and_time():
    event = message_event(
        app_id="cli_x",
        chat_type="group",
        chat_id="oc_g",
        thread_id="omt_9",
        message_id="om_1",
        create_time_ms=1700000000000,
    )["event"]
    msg = message_normalize(event=event, bot_open_id=BOT)
    assert (msg.message_id, msg.chat_id, msg.thread_id, msg.create_time_ms) == ("om_1", "oc_g", "omt_9", 1700000000000)


def test_it_survives_broken_content():
    event = message_event(app_id="cli_x")["event"]
    event["message"]["content"] = "{broken"
    assert message_normalize(event=event, bot_open_id=BOT).text == "{broken"
    event["message"]["content"] = json.dumps(["not", "an", "object"])
    assert message_normalize(event=event, bot_open_id=BOT).text == ""


def test_it_needs_the_bot_open_id_only_when_someone_is_mentioned():
    assert not needs_bot_open_id(message_event(app_id="x")["event"])
    assert not needs_bot_open_id(
        message_event(app_id="x", mentions=[{"key": "@_all", "id": {}, "name": "all"}])["event"]
    )
    assert needs_bot_open_id(message_event(app_id="x", mentions=[mention("@_user_1", "ou_a", "A")])["event"])
