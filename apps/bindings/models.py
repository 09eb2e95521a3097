from django.db import models

from omniagent.db import TenantOwnedModel


class Binding(TenantOwnedModel):
    """Routes a bot's chats (by type, chat or user) to an agent; the most specific one wins."""

    class ChatType(models.TextChoices):
        P2P = "p2p", "Private chat"
        GROUP = "group", "Group"
        ANY = "any", "Any"

    bot = models.ForeignKey("bots.Bot", on_delete=models.CASCADE, related_name="bindings")
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="bindings")
    chat_type = models.CharField(max_length=8, choices=ChatType.choices, default=ChatType.ANY)
    chat_id = models.CharField(max_length=64, blank=True, help_text="Only this chat (oc_...)")
    user_open_id = models.CharField(max_length=64, blank=True, help_text="Only this user (ou_...)")
    require_mention = models.BooleanField(default=True, help_text="In groups, answer only when @mentioned")
    priority = models.IntegerField(default=0, help_text="Higher wins among equally specific bindings")
    is_enabled = models.BooleanField(default=True)
    instructions = models.TextField(blank=True, help_text="Added to the agent's system prompt for these chats")
    welcome_message = models.TextField(blank=True, help_text="Posted when the bot is added to a group")

    class Meta:
        ordering = ["bot", "-priority", "id"]
        indexes = [models.Index(fields=["bot", "is_enabled"])]

    def __str__(self) -> str:
        scope = self.user_open_id or self.chat_id or self.chat_type
        return f"{self.bot_id} {scope} → {self.agent_id}"
