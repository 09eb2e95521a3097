"""Canned data and lookup tables for the fake Feishu Open API (tests/fakes/feishu.py)."""

from __future__ import annotations

# Emoji types Feishu accepts for reactions (case-sensitive), a representative subset.
EMOJI_TYPES = frozenset(
    """
    OK THUMBSUP THANKS MUSCLE FINGERHEART APPLAUSE FISTBUMP JIAYI DONE SMILE BLUSH LAUGH SMIRK LOL FACEPALM LOVE
    WINK PROUD WITTY SMART SCOWL THINKING SOB CRY ERROR NOSEPICK HAUGHTY SLAP SPITBLOOD TOASTED GLANCE DULL
    INNOCENTSMILE JOYFUL WOW TRICK YEAH ENOUGH TEARS EMBARRASSED KISS SMOOCH DROOL OBSESSED MONEY TEASE SHOWOFF
    COMFORT CLAP PRAISE STRIVE XBLUSH SILENT WAVE WHAT FROWN SHY DIZZY LOOKDOWN CHUCKLE WAIL CRAZY WHIMPER HUG
    BLUBBER WRONGED HUSKY SHHH SMUG ANGRY HAMMER SHOCKED TERROR PETRIFIED SKULL SWEAT SPEECHLESS SLEEP DROWSY
    YAWN SICK PUKE BETRAYED HEADSET EatingFood MeMeMe Sigh Typing Lemon Get LGTM OnIt OneSecond VRHeadset
    YouAreTheBest SALUTE SHAKE HIGHFIVE UPPERLEFT ThumbsDown SLIGHT TONGUE EYESCLOSED RoarForYou CALF BEAR BULL
    RAINBOWPUKE ROSE HEART PARTY LIPS BEER CAKE GIFT CUCUMBER Drumstick Pepper CANDIEDHAWS BubbleTea Coffee Yes
    No OKR CheckMark CrossMark MinusOne Hundred AWESOMEN Pin Alarm Loudspeaker Trophy Fire BOMB Music XmasTree
    Snowman XmasHat FIREWORKS REDPACKET FORTUNE LUCK FIRECRACKER HEARTBROKEN POOP StatusFlashOfInspiration
    GoGoGo ThanksFace SaluteFace Shrug ClownFace HappyDragon
    """.split()  # noqa: SIM905
)

MSG_TYPES = frozenset(
    {"text", "post", "image", "file", "audio", "media", "sticker", "interactive", "share_chat", "share_user"}
)
RECEIVE_ID_TYPES = frozenset({"open_id", "union_id", "user_id", "email", "chat_id"})
FILE_TYPES = frozenset({"opus", "mp4", "pdf", "doc", "xls", "ppt", "stream"})
POST_LOCALES = frozenset({"zh_cn", "en_us", "ja_jp", "zh_hk", "zh_tw"})

# Default documents for search/v2/doc_wiki/search and docx raw_content.
DEFAULT_DOCS = [
    {
        "token": "doxcnOnboarding0001",
        "title": "Onboarding guide",
        "entity_type": "DOC",
        "doc_type": "DOCX",
        "owner_name": "Alice",
        "text": "Welcome aboard. Expense reports are filed in the Finance base before the 5th of each month.",
        "update_time": 1763856000,
    },
    {
        "token": "wikcnHandbook0002",
        "title": "Engineering handbook",
        "entity_type": "WIKI",
        "doc_type": "DOCX",
        "owner_name": "Bob",
        "text": "On-call rotates weekly. Deploys happen from main after review; rollbacks need no approval.",
        "update_time": 1763942400,
    },
    {
        "token": "doxcnExpense0003",
        "title": "Expense policy",
        "entity_type": "DOC",
        "doc_type": "DOCX",
        "owner_name": "Carol",
        "text": "Travel expenses above 5000 CNY need a manager approval. Receipts are kept for three years.",
        "update_time": 1764028800,
    },
]

# Default bitable: (app_token, table_id) -> records.
DEFAULT_BITABLES = {
    ("bascnDemoBase0001", "tblOrders0001"): [
        {
            "record_id": "recOrder001",
            "fields": {"Order": "A-1001", "Customer": "ACME", "Amount": 1200, "Status": "Paid"},
        },
        {
            "record_id": "recOrder002",
            "fields": {"Order": "A-1002", "Customer": "Globex", "Amount": 300, "Status": "Open"},
        },
        {
            "record_id": "recOrder003",
            "fields": {"Order": "A-1003", "Customer": "ACME", "Amount": 4500, "Status": "Open"},
        },
        {
            "record_id": "recOrder004",
            "fields": {"Order": "A-1004", "Customer": "Initech", "Amount": 80, "Status": "Refunded"},
        },
    ],
}


def _as_text(value) -> str:
    if isinstance(value, list):
        return " ".join(_as_text(v) for v in value)
    if isinstance(value, dict):
        return str(value.get("text") or value.get("name") or "")
    return "" if value is None else str(value)


def _as_number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def bitable_condition_matches(fields: dict, condition: dict) -> bool:
    """Evaluate one bitable filter condition the way Feishu's search does (for the operators we use)."""
    name = condition.get("field_name")
    operator = condition.get("operator")
    values = condition.get("value") or []
    actual = fields.get(name)
    text = _as_text(actual)
    wanted = str(values[0]) if values else ""
    if operator == "is":
        return text == wanted
    if operator == "isNot":
        return text != wanted
    if operator == "contains":
        return all(str(v).lower() in text.lower() for v in values)
    if operator == "doesNotContain":
        return not any(str(v).lower() in text.lower() for v in values)
    if operator == "isEmpty":
        return actual in (None, "", [])
    if operator == "isNotEmpty":
        return actual not in (None, "", [])
    number, limit = _as_number(actual), _as_number(wanted)
    if number is None or limit is None:
        return False
    return {
        "isGreater": number > limit,
        "isGreaterEqual": number >= limit,
        "isLess": number < limit,
        "isLessEqual": number <= limit,
    }.get(operator, False)


BITABLE_OPERATORS = frozenset(
    {"is", "isNot", "contains", "doesNotContain", "isEmpty", "isNotEmpty", "isGreater", "isGreaterEqual", "isLess",
     "isLessEqual"}
)  # fmt: skip
