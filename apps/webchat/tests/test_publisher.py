"""The publisher delivers events from worker threads in order, on both channel layers."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from apps.webchat.publisher import Publisher


async def collect(layer, channel: str, count: int, timeout: float) -> list[int]:
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append((await layer.receive(channel))["n"])
    return got


def publish_from_threads(publisher: Publisher, group: str, count: int) -> None:
    def work():
        for n in range(count):
            publisher.publish(group, {"type": "webchat.event", "n": n}, flush=n == count - 1)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()


@pytest.mark.parametrize("backend", ["redis", "in-memory"])
async def test_it_delivers_in_order_and_promptly_from_a_worker_thread(settings, backend):
    if backend == "in-memory":
        # The embedded default: the layer's queues belong to the loop serving the sockets.
        settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("webchat.conversation.test-publisher", channel)
    publisher = Publisher()
    publisher.attach(asyncio.get_running_loop())  # what the consumer does on connect

    await sync_to_async(publish_from_threads, thread_sensitive=False)(
        publisher, "webchat.conversation.test-publisher", 50
    )
    assert await collect(layer, channel, 50, timeout=2) == list(range(50))
    publisher.detach(asyncio.get_running_loop())
    await asyncio.sleep(0.05)  # let the sender finish on this loop before the test closes it


async def test_it_uses_its_own_loop_when_no_socket_loop_is_attached():
    layer = get_channel_layer()  # Redis in tests: any loop may publish
    channel = await layer.new_channel()
    await layer.group_add("webchat.conversation.test-own-loop", channel)
    publisher = Publisher()

    await sync_to_async(publish_from_threads, thread_sensitive=False)(
        publisher, "webchat.conversation.test-own-loop", 20
    )
    assert await collect(layer, channel, 20, timeout=2) == list(range(20))
