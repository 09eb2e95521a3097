from django.db import models
from django.db.models import Q

from omniagent.db import TenantOwnedModel


class Origin(models.TextChoices):
    FEISHU = "feishu", "Feishu"
    API = "api", "API"
    WEB = "web", "Web chat"
    SCHEDULE = "schedule", "Schedule"


class Conversation(TenantOwnedModel):
    """One chat thread with an agent: a Feishu p2p chat, group or thread, an API session or a web chat."""

    origin = models.CharField(max_length=16, choices=Origin.choices)
    key = models.CharField(max_length=200, unique=True, help_text="e.g. feishu:BOT:CHAT[:THREAD]")
    bot = models.ForeignKey("bots.Bot", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    agent = models.ForeignKey("agents.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    chat_id = models.CharField(max_length=64, blank=True)
    chat_type = models.CharField(max_length=8, blank=True)
    thread_id = models.CharField(max_length=64, blank=True)
    user_open_id = models.CharField(max_length=64, blank=True)
    user = models.ForeignKey("auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    title = models.CharField(max_length=200, blank=True)
    # Short-term memory: history before session_started_at is forgotten (/reset, idle TTL);
    # rounds folded into `summary` are those whose user message id <= summary_upto_id.
    session_started_at = models.DateTimeField(null=True, blank=True)
    summary = models.TextField(blank=True)
    summary_upto_id = models.BigIntegerField(null=True, blank=True)
    last_activity_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # One runner at a time per conversation: compare-and-swap on runner_token, lease for crash recovery.
    runner_token = models.CharField(max_length=64, blank=True)
    runner_lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_activity_at"]

    def __str__(self) -> str:
        return self.title or self.key


class Message(TenantOwnedModel):
    """One entry of a transcript: a user message, an assistant answer, a tool call result or an error."""

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"
        SYSTEM = "system"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for its turn"
        PROCESSING = "processing", "Being answered"
        DONE = "done", "Done"
        IGNORED = "ignored", "Not answered"
        CANCELLED = "cancelled", "Cancelled"
        FAILED = "failed", "Failed"

    class Feedback(models.TextChoices):
        UP = "up", "👍"
        DOWN = "down", "👎"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    turn = models.ForeignKey(
        "transcripts.Turn", null=True, blank=True, on_delete=models.SET_NULL, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DONE)
    content = models.TextField(blank=True)
    attachments = models.JSONField(default=list, blank=True)
    mentions = models.JSONField(default=list, blank=True)
    tool_calls = models.JSONField(default=list, blank=True)
    tool_call_id = models.CharField(max_length=100, blank=True)
    tool_name = models.CharField(max_length=100, blank=True)
    sender_open_id = models.CharField(max_length=64, blank=True)
    # Inbound Feishu message id (user rows) or delivered message id (assistant rows).
    bot = models.ForeignKey("bots.Bot", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    external_id = models.CharField(max_length=100, blank=True)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=32, blank=True)
    trace_id = models.CharField(max_length=64, blank=True, db_index=True)
    feedback = models.CharField(max_length=8, choices=Feedback.choices, blank=True)
    feedback_by = models.CharField(max_length=64, blank=True)
    feedback_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["bot", "external_id"],
                condition=Q(role="user") & ~Q(external_id=""),
                name="message_unique_inbound_per_bot",
            )
        ]
        indexes = [
            models.Index(fields=["conversation", "status", "id"]),
            # The runtime's sweep looks for unanswered user messages across all conversations.
            models.Index(
                fields=["created_at"],
                name="message_unanswered_idx",
                condition=Q(role="user", status__in=["pending", "processing"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"


class InboundEvent(TenantOwnedModel):
    """A raw Feishu event as received (kept for audit and replay); unique per bot and event id."""

    class Source(models.TextChoices):
        WEBHOOK = "webhook"
        LONG_CONNECTION = "long_connection"

    class Status(models.TextChoices):
        ACCEPTED = "accepted", "Accepted"
        IGNORED = "ignored", "Ignored"
        DUPLICATE_MESSAGE = "duplicate", "Duplicate message"
        STALE = "stale", "Too old to answer"
        FAILED = "failed", "Failed"

    bot = models.ForeignKey("bots.Bot", on_delete=models.CASCADE, related_name="+")
    event_id = models.CharField(max_length=100)
    event_type = models.CharField(max_length=100)
    source = models.CharField(max_length=20, choices=Source.choices)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACCEPTED)
    status_reason = models.CharField(max_length=300, blank=True)
    trace_id = models.CharField(max_length=64, blank=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["bot", "event_id"], name="inboundevent_unique_per_bot")]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class Turn(TenantOwnedModel):
    """One run of an agent answering the pending messages of a conversation."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="turns")
    agent = models.ForeignKey("agents.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    trace_id = models.CharField(max_length=64, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    timings = models.JSONField(default=dict, blank=True, help_text="Milliseconds per stage")
    error_code = models.CharField(max_length=32, blank=True)
    error_detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"turn {self.pk} ({self.status})"


class LLMCall(TenantOwnedModel):
    """One request to an LLM during a turn, with its tokens and timings."""

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="llm_calls")
    model = models.CharField(max_length=100)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    ok = models.BooleanField(default=True)
    error = models.CharField(max_length=300, blank=True)
    trace_id = models.CharField(max_length=64, blank=True)

    class Meta:
        verbose_name = "LLM call"
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.model} ({self.latency_ms} ms)"
