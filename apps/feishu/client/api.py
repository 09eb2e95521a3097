"""FeishuClient: the Feishu Open API calls the product makes (hot ones by hand, the rest with lark's builders)."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from lark_oapi.api.bitable.v1 import SearchAppTableRecordRequest, SearchAppTableRecordRequestBody
from lark_oapi.api.docx.v1 import RawContentDocumentRequest
from lark_oapi.api.im.v1 import (
    CreateFileRequest,
    CreateFileRequestBody,
    CreateImageRequest,
    CreateImageRequestBody,
    GetMessageResourceRequest,
)
from lark_oapi.api.search.v2 import SearchDocWikiRequest, SearchDocWikiRequestBody
from lark_oapi.core.enum import AccessTokenType, HttpMethod
from lark_oapi.core.model import BaseRequest

from apps.feishu.client.transport import FeishuTransport, JsonRequest, _NamedBytes


def _json_str(value: dict | str) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_clients: dict[tuple, FeishuClient] = {}
_clients_lock = threading.Lock()


class FeishuClient(FeishuTransport):
    """Feishu Open API for one app (bot). Build with `FeishuClient.for_bot(bot)`; thread-safe."""

    @classmethod
    def for_bot(cls, bot) -> FeishuClient:
        """The client for `bot`, reused across calls (rebuilt when its credentials or base URL change)."""
        secret_fp = hashlib.sha256(bot.app_secret.encode()).hexdigest()[:16]
        key = (bot.pk, bot.app_id, secret_fp, bot.base_url)
        client = _clients.get(key)
        if client is None:
            with _clients_lock:
                if len(_clients) > 1000:
                    _clients.clear()
                client = _clients.setdefault(
                    key, cls(app_id=bot.app_id, app_secret=bot.app_secret, base_url=bot.base_url, name=str(bot))
                )
        return client

    # --- messages (hot: shaped by hand, same fields as lark's Reply/CreateMessageRequestBody) -----

    def reply_message(
        self, *, message_id: str, msg_type: str, content: dict | str, uuid: str, reply_in_thread: bool = False
    ) -> str:
        """Reply to `message_id`; returns the new message id. `uuid` makes a repeat a no-op at Feishu."""
        body = {"content": _json_str(content), "msg_type": msg_type, "reply_in_thread": reply_in_thread, "uuid": uuid}
        request = JsonRequest("POST", "/open-apis/im/v1/messages/:message_id/reply", {"message_id": message_id},
                              body=body)  # fmt: skip
        return self._call("im.message.reply", lambda: request).data["message_id"]

    def send_message(
        self, *, receive_id: str, receive_id_type: str, msg_type: str, content: dict | str, uuid: str
    ) -> str:
        """Send a new message to a chat or user; returns its message id."""
        body = {"receive_id": receive_id, "msg_type": msg_type, "content": _json_str(content), "uuid": uuid}
        query = {"receive_id_type": receive_id_type}
        request = JsonRequest("POST", "/open-apis/im/v1/messages", query=query, body=body)
        return self._call("im.message.create", lambda: request).data["message_id"]

    def patch_message(self, *, message_id: str, content: dict | str) -> None:
        """Replace the card of an interactive message we sent (card needs `update_multi`)."""
        request = JsonRequest("PATCH", "/open-apis/im/v1/messages/:message_id", {"message_id": message_id},
                              body={"content": _json_str(content)})  # fmt: skip
        self._call("im.message.patch", lambda: request)

    # --- CardKit streaming cards (hot: shaped by hand, same fields as lark's cardkit.v1 bodies) ----

    def card_create(self, *, card: dict | str) -> str:
        """Create a CardKit card entity from card JSON 2.0; returns card_id."""
        body = {"type": "card_json", "data": _json_str(card)}
        request = JsonRequest("POST", "/open-apis/cardkit/v1/cards", body=body)
        return self._call("cardkit.card.create", lambda: request).data["card_id"]

    def card_update(self, *, card_id: str, card: dict | str, sequence: int, uuid: str = "") -> None:
        """Replace the whole card (`PUT /cardkit/v1/cards/:card_id`, lark's cardkit.v1.card.update).

        One call for "final text and end of streaming": the new card JSON carries the full content and
        `config.streaming_mode: false`. `sequence` is the card's, shared with element updates.
        """
        body: dict[str, Any] = {"card": {"type": "card_json", "data": _json_str(card)}, "sequence": sequence}
        if uuid:
            body["uuid"] = uuid
        request = JsonRequest("PUT", "/open-apis/cardkit/v1/cards/:card_id", {"card_id": card_id}, body=body)
        self._call("cardkit.card.update", lambda: request, sequenced=True)

    def card_element_content(
        self, *, card_id: str, element_id: str, content: str, sequence: int, uuid: str = ""
    ) -> None:
        """Set the full text of a streaming element; `sequence` must grow strictly per card."""
        body: dict[str, Any] = {"content": content, "sequence": sequence}
        if uuid:
            body["uuid"] = uuid
        request = JsonRequest(
            "PUT", "/open-apis/cardkit/v1/cards/:card_id/elements/:element_id/content",
            {"card_id": card_id, "element_id": element_id}, body=body,
        )  # fmt: skip
        self._call("cardkit.card_element.content", lambda: request, sequenced=True)

    def card_settings(self, *, card_id: str, settings: dict | str, sequence: int, uuid: str = "") -> None:
        """Change card settings, e.g. `{"config": {"streaming_mode": false}}` to end streaming."""
        body: dict[str, Any] = {"settings": _json_str(settings), "sequence": sequence}
        if uuid:
            body["uuid"] = uuid
        request = JsonRequest("PATCH", "/open-apis/cardkit/v1/cards/:card_id/settings", {"card_id": card_id}, body=body)
        self._call("cardkit.card.settings", lambda: request, sequenced=True)

    # --- reactions (hot), resources, uploads ------------------------------------------------------

    def reaction_add(self, *, message_id: str, emoji_type: str) -> str:
        """Add a reaction (emoji_type is case-sensitive: `OnIt`, `THUMBSUP`, `DONE`); returns reaction_id."""
        request = JsonRequest("POST", "/open-apis/im/v1/messages/:message_id/reactions", {"message_id": message_id},
                              body={"reaction_type": {"emoji_type": emoji_type}})  # fmt: skip
        return self._call("im.message_reaction.create", lambda: request).data["reaction_id"]

    def reaction_remove(self, *, message_id: str, reaction_id: str) -> None:
        request = JsonRequest("DELETE", "/open-apis/im/v1/messages/:message_id/reactions/:reaction_id",
                              {"message_id": message_id, "reaction_id": reaction_id})  # fmt: skip
        self._call("im.message_reaction.delete", lambda: request)

    def resource_download(self, *, message_id: str, file_key: str, resource_type: str) -> bytes:
        """Bytes of an image/file attached to a message (`resource_type`: image | file)."""

        def build() -> BaseRequest:
            return (
                GetMessageResourceRequest.builder()
                .message_id(message_id)
                .file_key(file_key)
                .type(resource_type)
                .build()
            )

        return self._call("im.message_resource.get", build).content

    def image_upload(self, *, data: bytes, name: str) -> str:
        """Upload an image for sending in messages; returns image_key."""

        def build() -> BaseRequest:
            body = CreateImageRequestBody.builder().image_type("message").image(_NamedBytes(data, name)).build()
            return CreateImageRequest.builder().request_body(body).build()

        return self._call("im.image.create", build, multipart=True).data["image_key"]

    def file_upload(self, *, data: bytes, name: str, file_type: str = "stream") -> str:
        """Upload a file for sending in messages; returns file_key."""

        def build() -> BaseRequest:
            body = (
                CreateFileRequestBody.builder()
                .file_type(file_type)
                .file_name(name)
                .file(_NamedBytes(data, name))
                .build()
            )
            return CreateFileRequest.builder().request_body(body).build()

        return self._call("im.file.create", build, multipart=True).data["file_key"]

    # --- bot and data APIs (tools) ---------------------------------------------------------------

    def bot_info(self) -> dict:
        """`GET /open-apis/bot/v3/info` → {"open_id", "app_name", ...} (the answer has no `data` key)."""

        def build() -> BaseRequest:
            return (
                BaseRequest.builder()
                .http_method(HttpMethod.GET)
                .uri("/open-apis/bot/v3/info")
                .token_types({AccessTokenType.TENANT})
                .build()
            )

        return (self._call("bot.info", build).body or {}).get("bot") or {}

    def bitable_record_search(
        self,
        *,
        app_token: str,
        table_id: str,
        body: dict,
        page_size: int = 20,
        page_token: str = "",
        user_access_token: str = "",
    ) -> dict:
        """Bitable record search; `body` is Feishu's (view_id, field_names, sort, filter). Returns `data`."""

        def build() -> BaseRequest:
            req = (
                SearchAppTableRecordRequest.builder()
                .app_token(app_token)
                .table_id(table_id)
                .page_size(page_size)
                .request_body(SearchAppTableRecordRequestBody(body))
            )
            if page_token:
                req = req.page_token(page_token)
            return req.build()

        return self._call("bitable.app_table_record.search", build, user_access_token=user_access_token).data

    def doc_wiki_search(
        self,
        *,
        query: str,
        page_size: int = 10,
        page_token: str = "",
        doc_filter: dict | None = None,
        wiki_filter: dict | None = None,
        user_access_token: str = "",
    ) -> dict:
        """Search docs and wiki (`search.v2.doc_wiki.search`, a user-identity API). Returns `data`."""
        payload: dict[str, Any] = {"query": query, "page_size": page_size}
        if page_token:
            payload["page_token"] = page_token
        payload["doc_filter"] = doc_filter or {}
        payload["wiki_filter"] = wiki_filter or {}

        def build() -> BaseRequest:
            return SearchDocWikiRequest.builder().request_body(SearchDocWikiRequestBody(dict(payload))).build()

        return self._call("search.doc_wiki.search", build, user_access_token=user_access_token).data

    def docx_raw_content(self, *, document_id: str, user_access_token: str = "") -> str:
        """Plain text of a docx document."""

        def build() -> BaseRequest:
            return RawContentDocumentRequest.builder().document_id(document_id).lang(0).build()

        return self._call("docx.document.raw_content", build, user_access_token=user_access_token).data.get(
            "content", ""
        )
