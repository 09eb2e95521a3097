"""The web chat socket on the real ASGI app (session auth, Redis channel layer, PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from apps.transcripts.models import Conversation, Message, Origin, Turn
from apps.webchat.events import conversation_group, layer_message
from tests.factories import AgentFactory, MembershipFactory, UserFactory

from .conftest import session_cookie, ws

pytestmark = [pytest.mark.django_db(transaction=True)]


async def closed_with(communicator) -> int | None:
    """Connect and return the close code the server sends right after accepting (None if it stays open)."""
    connected, code = await communicator.connect()
    if not connected:
        return code
    try:
        output = await communicator.receive_output(timeout=2)
    except TimeoutError:
        return None
    finally:
        await communicator.disconnect()
    assert output["type"] == "websocket.close", output
    return output["code"]


@pytest.fixture
def agent_a(personas):
    return AgentFactory(tenant=personas.tenant_a, slug="helper", name="Helper")


@pytest.fixture
def agent_b(personas):
    return AgentFactory(tenant=personas.tenant_b, slug="globex-helper")


async def test_it_closes_an_unauthenticated_socket_with_4401(agent_a):
    assert await closed_with(ws(agent_a.pk)) == 4401


async def test_it_closes_for_another_tenants_agent_exactly_like_a_missing_one(personas, agent_a, agent_b):
    cookie = await sync_to_async(session_cookie)(personas.owner_a)
    assert await closed_with(ws(agent_b.pk, cookie)) == 4403
    assert await closed_with(ws(agent_b.pk + 100000, cookie)) == 4403
    # The stranger from tenant B cannot reach tenant A's agent either.
    cookie_b = await sync_to_async(session_cookie)(personas.staff_b)
    assert await closed_with(ws(agent_a.pk, cookie_b)) == 4403
    assert not await Conversation.objects.filter(agent__in=[agent_a, agent_b]).aexists()


async def test_it_refuses_viewers_and_non_staff(personas, agent_a):
    viewer = await sync_to_async(session_cookie)(personas.viewer_a)
    assert await closed_with(ws(agent_a.pk, viewer)) == 4403

    def non_staff_member():
        user = UserFactory(is_staff=False)
        MembershipFactory(tenant=personas.tenant_a, user=user)
        return session_cookie(user)

    assert await closed_with(ws(agent_a.pk, await sync_to_async(non_staff_member)())) == 4403


async def test_it_opens_session_one_and_sends_ready(personas, agent_a):
    cookie = await sync_to_async(session_cookie)(personas.owner_a)
    communicator = ws(agent_a.pk, cookie)
    connected, _ = await communicator.connect()
    assert connected
    ready = await communicator.receive_json_from(timeout=3)
    await communicator.disconnect()

    conversation = await Conversation.objects.aget(pk=ready["conversation_id"])
    assert conversation.key == f"web:{personas.owner_a.pk}:{agent_a.pk}:1"
    assert (conversation.origin, conversation.tenant_id, conversation.user_id) == (
        Origin.WEB,
        personas.tenant_a.pk,
        personas.owner_a.pk,
    )
    assert ready["type"] == "ready"
    assert ready["session"] == 1
    assert ready["agent"]["name"] == "Helper"
    assert ready["agent"]["demo"] is False
    assert ready["history"] == [] and ready["busy"] is False


async def test_it_stores_a_pending_message_enqueues_it_and_echoes_it(personas, agent_a, monkeypatch):
    enqueued: list[int] = []
    monkeypatch.setattr("apps.runtime.dispatch._send", enqueued.append)
    cookie = await sync_to_async(session_cookie)(personas.owner_a)
    communicator = ws(agent_a.pk, cookie)
    await communicator.connect()
    ready = await communicator.receive_json_from(timeout=3)

    await communicator.send_json_to({"type": "message", "text": "  Hello there  "})
    echo = await communicator.receive_json_from(timeout=3)
    await communicator.disconnect()

    message = await Message.objects.aget(pk=echo["message_id"])
    assert echo == {"type": "user.message", "message_id": message.pk, "text": "Hello there"}
    assert (message.conversation_id, message.role, message.status, message.content) == (
        ready["conversation_id"],
        Message.Role.USER,
        Message.Status.PENDING,
        "Hello there",
    )
    assert message.tenant_id == personas.tenant_a.pk and message.trace_id
    assert enqueued == [ready["conversation_id"]]


async def test_it_answers_bad_requests_without_side_effects(personas, agent_a, monkeypatch):
    enqueued: list[int] = []
    monkeypatch.setattr("apps.runtime.dispatch._send", enqueued.append)
    cookie = await sync_to_async(session_cookie)(personas.owner_a)
    communicator = ws(agent_a.pk, cookie)
    await communicator.connect()
    await communicator.receive_json_from(timeout=3)

    for bad in ({"type": "message", "text": "   "}, {"type": "message", "text": "x" * 8001}, {"type": "dance"}, [1]):
        await communicator.send_json_to(bad)
        answer = await communicator.receive_json_from(timeout=3)
        assert answer["type"] == "error" and answer["code"] == "BAD_REQUEST", bad
    await communicator.disconnect()
    assert not await Message.objects.filter(conversation__agent=agent_a).aexists()
    assert enqueued == []


async def test_it_forwards_events_published_to_its_conversation_group(personas, agent_a):
    cookie = await sync_to_async(session_cookie)(personas.owner_a)
    communicator = ws(agent_a.pk, cookie)
    await communicator.connect()
    ready = await communicator.receive_json_from(timeout=3)

    event = {"type": "text.delta", "turn_id": 7, "delta": "Hel"}
    await get_channel_layer().group_send(conversation_group(ready["conversation_id"]), layer_message(event))
    assert await communicator.receive_json_from(timeout=3) == event
    # Nothing from another conversation's group.
    await get_channel_layer().group_send(conversation_group(ready["conversation_id"] + 1), layer_message(event))
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_it_closes_when_membership_is_revoked_mid_session(personas, agent_a, monkeypatch):
    monkeypatch.setattr("apps.runtime.dispatch._send", lambda conversation_id: None)
    cookie = await sync_to_async(session_cookie)(personas.owner_a)
    communicator = ws(agent_a.pk, cookie)
    await communicator.connect()
    await communicator.receive_json_from(timeout=3)

    from apps.tenants.models import Membership

    await Membership.objects.filter(user=personas.owner_a).adelete()
    await communicator.send_json_to({"type": "message", "text": "still there?"})
    output = await communicator.receive_output(timeout=3)
    assert output == {"type": "websocket.close", "code": 4403}
    await communicator.disconnect()
    assert not await Message.objects.filter(conversation__agent=agent_a).aexists()


async def test_new_session_starts_the_next_conversation_and_moves_the_socket(personas, agent_a, monkeypatch):
    monkeypatch.setattr("apps.runtime.dispatch._send", lambda conversation_id: None)
    cookie = await sync_to_async(session_cookie)(personas.owner_a)
    communicator = ws(agent_a.pk, cookie)
    await communicator.connect()
    first = await communicator.receive_json_from(timeout=3)
    await communicator.send_json_to({"type": "message", "text": "remember 42"})
    await communicator.receive_json_from(timeout=3)

    await communicator.send_json_to({"type": "reset"})
    session = await communicator.receive_json_from(timeout=3)
    assert session["type"] == "session" and session["session"] == 2
    assert session["conversation_id"] != first["conversation_id"]
    new = await Conversation.objects.aget(pk=session["conversation_id"])
    assert new.key == f"web:{personas.owner_a.pk}:{agent_a.pk}:2"
    # The waiting message of the old session was dropped, not left for a runner.
    old_message = await Message.objects.aget(conversation_id=first["conversation_id"])
    assert old_message.status == Message.Status.CANCELLED

    layer = get_channel_layer()
    await layer.group_send(conversation_group(first["conversation_id"]), layer_message({"type": "final"}))
    assert await communicator.receive_nothing(timeout=0.3)
    await layer.group_send(conversation_group(new.pk), layer_message({"type": "final", "text": "x"}))
    assert (await communicator.receive_json_from(timeout=3))["text"] == "x"
    await communicator.disconnect()

    # Reconnecting lands in the newest session, with its (empty) history.
    again = ws(agent_a.pk, cookie)
    await again.connect()
    ready = await again.receive_json_from(timeout=3)
    await again.disconnect()
    assert ready["conversation_id"] == new.pk and ready["history"] == []


async def test_stop_before_any_turn_drops_the_waiting_message_and_says_cancelled(personas, agent_a, monkeypatch):
    monkeypatch.setattr("apps.runtime.dispatch._send", lambda conversation_id: None)
    cookie = await sync_to_async(session_cookie)(personas.owner_a)
    communicator = ws(agent_a.pk, cookie)
    await communicator.connect()
    await communicator.receive_json_from(timeout=3)
    await communicator.send_json_to({"type": "message", "text": "long question"})
    echo = await communicator.receive_json_from(timeout=3)

    await communicator.send_json_to({"type": "stop"})
    assert await communicator.receive_json_from(timeout=3) == {"type": "cancelled", "turn_id": None}
    await communicator.disconnect()
    message = await Message.objects.aget(pk=echo["message_id"])
    assert message.status == Message.Status.CANCELLED
    assert not await Turn.objects.filter(conversation_id=message.conversation_id).aexists()


async def test_stop_right_after_a_runner_claimed_the_message_still_cancels_its_turn(personas, agent_a, monkeypatch):
    """The gap between "message claimed" and "turn created": Stop asks again instead of saying nothing ran."""
    monkeypatch.setattr("apps.runtime.dispatch._send", lambda conversation_id: None)
    cancelled: list[int] = []
    monkeypatch.setattr("apps.runtime.services.turn_cancel", lambda *, turn: cancelled.append(turn.pk) or True)
    cookie = await sync_to_async(session_cookie)(personas.owner_a)
    communicator = ws(agent_a.pk, cookie)
    await communicator.connect()
    await communicator.receive_json_from(timeout=3)
    await communicator.send_json_to({"type": "message", "text": "question"})
    echo = await communicator.receive_json_from(timeout=3)
    message = await Message.objects.aget(pk=echo["message_id"])
    # A runner claims the message; its turn row appears a moment later.
    await Message.objects.filter(pk=message.pk).aupdate(status=Message.Status.PROCESSING)

    async def turn_appears():
        await asyncio.sleep(0.25)
        turn = await Turn.objects.acreate(
            tenant_id=message.tenant_id,
            conversation_id=message.conversation_id,
            status=Turn.Status.RUNNING,
            trace_id="t",
        )
        await Message.objects.filter(pk=message.pk).aupdate(turn=turn)
        return turn

    appearing = asyncio.create_task(turn_appears())
    await communicator.send_json_to({"type": "stop"})
    turn = await appearing
    assert await communicator.receive_nothing(timeout=1.5)  # no premature "nothing to stop"
    await communicator.disconnect()
    assert cancelled == [turn.pk]
