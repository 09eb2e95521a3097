"""Admin for outbound Feishu sends: delivery status at a glance, and retrying the failed ones."""

from __future__ import annotations

import structlog
from django.contrib import admin, messages
from django.http import HttpRequest

from apps.audit.models import AuditLog
from apps.audit.services import audit_record
from apps.feishu.models import OutboundMessage
from omniagent.admin.access import tenant_access
from omniagent.admin.options import TenantScopedAdmin

logger = structlog.get_logger(__name__)


@admin.register(OutboundMessage)
class OutboundMessageAdmin(TenantScopedAdmin):
    read_only = True  # rows are written by the egress layer; people only look and retry
    list_display = (
        "id", "operation", "msg_type", "receive_id", "bot", "tenant", "status", "attempts", "last_error", "created_at",
        "sent_at",
    )  # fmt: skip
    list_filter = (
        "status",
        "operation",
        "msg_type",
        ("tenant", admin.RelatedOnlyFieldListFilter),
        ("bot", admin.RelatedOnlyFieldListFilter),
    )
    list_select_related = ("tenant", "bot")
    search_fields = ("receive_id", "uuid", "trace_id", "feishu_message_id", "last_error")
    fields = (
        "tenant", "bot", "conversation", "operation", "receive_id", "receive_id_type", "msg_type", "content",
        "reply_in_thread", "uuid", "status", "attempts", "last_error", "feishu_message_id", "trace_id", "created_at",
        "sent_at",
    )  # fmt: skip
    readonly_fields = fields
    actions = ("retry_failed_sends",)

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return tenant_access(request).can_write_any

    @admin.action(description="Retry failed sends", permissions=["retry"])
    def retry_failed_sends(self, request: HttpRequest, queryset) -> None:
        # Imported on use: the egress layer (lark-oapi client) loads only when someone actually retries.
        from apps.feishu.outbound import RetryTooLate, outbound_retry

        sent = failed = too_late = 0
        # response_action already limited the queryset to tenants this user may write to.
        for outbound in queryset.filter(status=OutboundMessage.Status.FAILED).select_related("bot", "tenant"):
            try:
                result = outbound_retry(outbound=outbound)
            except RetryTooLate:
                too_late += 1
                continue
            except Exception:
                logger.exception("admin.outbound_retry.crashed", outbound_id=outbound.pk)
                result = None
            new_status = result.status if result is not None else OutboundMessage.Status.FAILED
            sent += new_status == OutboundMessage.Status.SENT
            failed += new_status != OutboundMessage.Status.SENT
            audit_record(
                tenant=outbound.tenant,
                actor=request.user,
                action=AuditLog.Action.ACTION,
                obj=outbound,
                changes={"retry": {"old": OutboundMessage.Status.FAILED.value, "new": str(new_status)}},
            )
        if too_late:
            self.message_user(
                request,
                f"{too_late} send(s) not retried: first tried over an hour ago, when Feishu no longer drops a "
                "repeated send, so a retry could post the message twice (it may have arrived).",
                messages.WARNING,
            )
        if not sent and not failed:
            if not too_late:
                self.message_user(request, "No failed sends among the selected messages.", messages.INFO)
            return
        level = messages.SUCCESS if not failed else messages.WARNING
        self.message_user(request, f"Retried {sent + failed} send(s): {sent} sent, {failed} still failing.", level)
