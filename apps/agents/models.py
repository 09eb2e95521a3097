from django.db import models

from omniagent.db import TenantOwnedModel
from omniagent.fields import EncryptedTextField


class Agent(TenantOwnedModel):
    """An LLM agent: model endpoint, prompt, tools and short-term memory settings."""

    slug = models.SlugField(max_length=64)
    name = models.CharField(max_length=100, blank=True)
    description = models.TextField(blank=True)
    base_url = models.URLField(help_text="OpenAI-compatible base URL, e.g. https://api.deepseek.com/v1")
    api_key = EncryptedTextField(blank=True)
    model = models.CharField(max_length=100)
    fallback_model = models.CharField(max_length=100, blank=True, help_text="Used when the primary model fails")
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(default=0.7)
    max_output_tokens = models.PositiveIntegerField(default=2048)
    timeout = models.PositiveIntegerField(default=60, help_text="Seconds an LLM call may take before AGENT_001")
    max_tool_rounds = models.PositiveSmallIntegerField(default=5)
    tools = models.JSONField(default=list, blank=True, help_text="Tool names, e.g. feishu.v1.bitable.search")
    memory_rounds = models.PositiveSmallIntegerField(default=5)
    memory_token_budget = models.PositiveIntegerField(default=4000)
    memory_idle_minutes = models.PositiveIntegerField(default=30)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["slug"]
        constraints = [models.UniqueConstraint(fields=["tenant", "slug"], name="agent_unique_slug_per_tenant")]

    def __str__(self) -> str:
        return self.name or self.slug
