"""Prometheus metrics: counters shared by ingress, turns and the Feishu client; /metrics exposes them."""

from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

INBOUND_EVENTS = Counter("omniagent_inbound_events_total", "Feishu events received", ["source", "outcome"])
TURNS = Counter("omniagent_turns_total", "Agent turns finished", ["status"])
TURN_SECONDS = Histogram("omniagent_turn_seconds", "Agent turn duration")
FEISHU_CALLS = Counter("omniagent_feishu_calls_total", "Outbound Feishu API calls", ["operation", "outcome"])


def metrics_view(request):
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)
