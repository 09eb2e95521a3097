from django.db import models

from omniagent.db import TenantOwnedModel
from omniagent.fields import EncryptedTextField


class OAuthToken(TenantOwnedModel):
    """A Feishu user's access and refresh tokens for one bot (tools acting as that user)."""

    bot = models.ForeignKey("bots.Bot", on_delete=models.CASCADE, related_name="oauth_tokens")
    user_open_id = models.CharField(max_length=64)
    access_token = EncryptedTextField()
    refresh_token = EncryptedTextField(blank=True)
    access_expires_at = models.DateTimeField()
    refresh_expires_at = models.DateTimeField(null=True, blank=True)
    scopes = models.CharField(max_length=500, blank=True)

    class Meta:
        verbose_name = "OAuth token"
        constraints = [models.UniqueConstraint(fields=["bot", "user_open_id"], name="oauthtoken_unique_user_per_bot")]

    def __str__(self) -> str:
        return f"{self.user_open_id} @ {self.bot_id}"
