"""A conversation's chat page reads like the conversation: each turn's question, its tools, its answer."""

import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.transcripts.models import Message, Turn
from apps.transcripts.selectors import conversation_chat
from tests.factories import ConversationFactory, LLMCallFactory, MessageFactory, TurnFactory

pytestmark = pytest.mark.django_db
T0 = timezone.now() - datetime.timedelta(hours=1)


def _at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def _message(conversation, *, at: float, **fields) -> Message:
    message = MessageFactory(conversation=conversation, **fields)
    Message.objects.filter(pk=message.pk).update(created_at=_at(at))  # created_at is auto_now_add
    message.created_at = _at(at)
    return message


def _bubbles(page: str) -> list[tuple[str, str]]:
    """(role, marker) of each chat bubble in page order; markers are the "M-..." words in the texts."""
    chat = page.split('<div class="oa-chat">', 1)[1]
    bubbles = []
    for chunk in chat.split('<div class="oa-bubble')[1:]:
        role = chunk.split('data-role="', 1)[1].split('"', 1)[0]
        marker = next(word for word in chunk.split() if word.startswith("M-"))
        bubbles.append((role, marker))
    return bubbles


@pytest.fixture
def queued(personas):
    """Two turns as the runtime writes them, with a message queued during turn 1 and one ignored.

    Ids (creation order):  user M-q1, assistant M-a1 (at turn 1 start), user M-q2 (queued while turn 1
    runs), tools M-t1a, M-t1b (when turn 1 is saved), ignored M-ignored (after turn 1), assistant M-a2,
    tool M-t2, and a notice M-notice after turn 2.
    """
    conversation = ConversationFactory(tenant=personas.tenant_a)
    turn1 = TurnFactory(conversation=conversation, started_at=_at(1), trace_id="trace-turn-1")
    turn2 = TurnFactory(conversation=conversation, started_at=_at(20), trace_id="trace-turn-2")
    LLMCallFactory(turn=turn1, input_tokens=300, output_tokens=42)
    _message(conversation, at=0, turn=turn1, role=Message.Role.USER, content="M-q1 how many open cases?")
    _message(
        conversation,
        at=1,
        turn=turn1,
        role=Message.Role.ASSISTANT,
        content="M-a1 there are 12 open cases.",
        tool_calls=[
            {"id": "c1", "name": "bitable_search", "arguments": '{"q": "open"}'},
            {"id": "c2", "name": "bitable_count", "arguments": "{}"},
        ],
        trace_id="trace-turn-1",
        feedback=Message.Feedback.UP,
        feedback_by="ou_lawyer",
    )
    _message(conversation, at=5, turn=turn2, role=Message.Role.USER, content="M-q2 and the closed ones?")
    _message(
        conversation, at=12, turn=turn1, role=Message.Role.TOOL, tool_name="bitable_search", content="M-t1a 12 rows"
    )
    _message(
        conversation, at=12, turn=turn1, role=Message.Role.TOOL, tool_name="bitable_count", content="M-t1b total 12"
    )
    _message(
        conversation,
        at=15,
        role=Message.Role.USER,
        status=Message.Status.IGNORED,
        content="M-ignored (not addressed to the bot)",
    )
    _message(conversation, at=20, turn=turn2, role=Message.Role.ASSISTANT, content="M-a2 there are 40 closed ones.")
    _message(conversation, at=25, turn=turn2, role=Message.Role.TOOL, tool_name="bitable_count", content="M-t2 40")
    _message(conversation, at=30, role=Message.Role.SYSTEM, content="M-notice conversation reset")
    return {"conversation": conversation, "turns": (turn1, turn2)}


READING_ORDER = [
    ("user", "M-q1"),
    ("tool", "M-t1a"),
    ("tool", "M-t1b"),
    ("assistant", "M-a1"),
    ("user", "M-ignored"),
    ("user", "M-q2"),
    ("tool", "M-t2"),
    ("assistant", "M-a2"),
    ("system", "M-notice"),
]


def test_it_renders_each_turn_as_question_tools_answer_in_reading_order(client, personas, queued):
    client.force_login(personas.viewer_a)
    url = reverse("admin:transcripts_conversation_change", args=[queued["conversation"].pk])
    page = client.get(url).content.decode()

    assert _bubbles(page) == READING_ORDER
    # One header per turn, right before that turn's first message.
    turn1, turn2 = queued["turns"]
    chat = page.split('<div class="oa-chat">', 1)[1]
    assert chat.count('class="oa-turn"') == 2
    assert chat.index(f"turn {turn1.pk}<") < chat.index("M-q1") < chat.index("M-a1") < chat.index("M-ignored")
    assert chat.index("M-ignored") < chat.index(f"turn {turn2.pk}<") < chat.index("M-q2")
    # The rest of the page is unchanged: tokens, trace ids, feedback, the answer's tool calls.
    assert "tokens 300 in / 42 out" in chat and "trace-turn-1" in chat and "trace-turn-2" in chat
    assert "👍" in chat and "ou_lawyer" in chat and "Not answered" in chat
    assert "⚙ bitable_search" in chat and "⚙ bitable_count" in chat


def test_the_selector_orders_by_turn_start_then_step(queued):
    entries = conversation_chat(conversation=queued["conversation"])
    turn1, turn2 = queued["turns"]
    lines = [
        f"turn {e.turn.pk}" if e.kind == "turn" else (e.message.role, e.message.content.split()[0]) for e in entries
    ]
    assert lines == [f"turn {turn1.pk}", *READING_ORDER[:5], f"turn {turn2.pk}", *READING_ORDER[5:]]
    header = entries[0].turn
    assert (header.input_tokens, header.output_tokens) == (300, 42)


def test_the_selector_keeps_the_newest_messages_when_limited(queued):
    entries = conversation_chat(conversation=queued["conversation"], limit=3)
    # The three newest by id: M-a2, M-t2, M-notice (turn 2's question is older and left out).
    assert [(e.message.role, e.message.content.split()[0]) for e in entries if e.kind == "message"] == [
        ("tool", "M-t2"),
        ("assistant", "M-a2"),
        ("system", "M-notice"),
    ]


def test_a_turn_without_a_start_time_is_placed_by_when_it_was_created(personas):
    conversation = ConversationFactory(tenant=personas.tenant_a)
    turn = TurnFactory(conversation=conversation, status=Turn.Status.QUEUED, started_at=None)
    _message(conversation, at=-3600 * 24, role=Message.Role.USER, status=Message.Status.IGNORED, content="M-old")
    MessageFactory(conversation=conversation, turn=turn, role=Message.Role.ASSISTANT, content="M-answer")
    MessageFactory(conversation=conversation, turn=turn, role=Message.Role.USER, content="M-question")
    contents = [e.message.content for e in conversation_chat(conversation=conversation) if e.kind == "message"]
    assert contents == ["M-old", "M-question", "M-answer"]


def _page_queries(client, conversation) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("admin:transcripts_conversation_change", args=[conversation.pk]))
    assert response.status_code == 200
    return len(queries)


def test_it_renders_a_long_conversation_in_a_bounded_number_of_queries(
    client, personas, queued, django_assert_max_num_queries
):
    conversation = queued["conversation"]
    client.force_login(personas.owner_a)
    few = _page_queries(client, conversation)
    for i in range(30):
        turn = TurnFactory(conversation=conversation, started_at=_at(100 + i))
        LLMCallFactory(turn=turn)
        MessageFactory(conversation=conversation, turn=turn, role=Message.Role.USER, content=f"M-more-q{i}")
        MessageFactory(conversation=conversation, turn=turn, role=Message.Role.ASSISTANT, content=f"M-more-a{i}")
        MessageFactory(conversation=conversation, turn=turn, role=Message.Role.TOOL, content=f"M-more-t{i}")
    with django_assert_max_num_queries(few):
        page = client.get(reverse("admin:transcripts_conversation_change", args=[conversation.pk])).content.decode()
    assert len(_bubbles(page)) == len(READING_ORDER) + 90
    assert few <= 14
