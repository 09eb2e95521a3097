from django.db import models

from omniagent.db import TenantOwnedModel


class OutboundMessage(TenantOwnedModel):
    """One send to Feishu (message, reply or card) with its delivery status; failed ones can be retried."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed"

    bot = models.ForeignKey("bots.Bot", on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey(
        "transcripts.Conversation", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Deterministic: derived from what it answers, so a retried send is deduplicated by Feishu.
    uuid = models.CharField(max_length=64)
    operation = models.CharField(max_length=16, help_text="reply or create")
    receive_id = models.CharField(max_length=100, blank=True, help_text="chat/open id, or the replied message id")
    receive_id_type = models.CharField(max_length=16, blank=True)
    msg_type = models.CharField(max_length=20)
    content = models.TextField()
    reply_in_thread = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True)
    feishu_message_id = models.CharField(max_length=100, blank=True)
    trace_id = models.CharField(max_length=64, blank=True, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["bot", "uuid"], name="outbound_unique_uuid_per_bot")]

    def __str__(self) -> str:
        return f"{self.operation} {self.msg_type} → {self.receive_id} ({self.status})"
