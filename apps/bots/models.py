from django.conf import settings
from django.db import models

from omniagent.db import TenantOwnedModel
from omniagent.fields import EncryptedTextField


class Bot(TenantOwnedModel):
    """One Feishu/Lark app: its credentials, delivery mode and live connection state."""

    class Mode(models.TextChoices):
        WEBHOOK = "webhook", "Webhook"
        LONG_CONNECTION = "long_connection", "Long connection"

    class ConnectionState(models.TextChoices):
        NOT_APPLICABLE = "n/a", "n/a (webhook)"
        CONNECTING = "connecting", "Connecting"
        CONNECTED = "connected", "Connected"
        DISCONNECTED = "disconnected", "Disconnected"
        ERROR = "error", "Error"

    name = models.CharField(max_length=100, blank=True)
    app_id = models.CharField(max_length=64, unique=True)
    app_secret = EncryptedTextField()
    verification_token = EncryptedTextField(blank=True)
    encrypt_key = EncryptedTextField(blank=True)
    mode = models.CharField(max_length=20, choices=Mode.choices, default=Mode.WEBHOOK)
    base_url = models.URLField(default=settings.FEISHU_DEFAULT_BASE_URL, help_text="Feishu or Lark Open API base URL")
    bot_open_id = models.CharField(max_length=64, blank=True, help_text="Filled from /open-apis/bot/v3/info")
    is_active = models.BooleanField(default=True)
    last_event_at = models.DateTimeField(null=True, blank=True)
    connection_state = models.CharField(
        max_length=16, choices=ConnectionState.choices, default=ConnectionState.NOT_APPLICABLE
    )
    connection_detail = models.CharField(max_length=300, blank=True)
    connection_updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["app_id"]

    def __str__(self) -> str:
        return self.name or self.app_id
