"""Feishu Open API semantics for the fake server (tests/fakes/feishu.py): routes, checks, state changes.

Each handler gets the recorded request and the authenticated caller and returns Feishu's JSON answer, or
raises FeishuAPIError with Feishu's code. State lives on the FakeFeishu instance (this is its mixin).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from tests.fakes.feishu_data import (
    BITABLE_OPERATORS,
    EMOJI_TYPES,
    FILE_TYPES,
    MSG_TYPES,
    POST_LOCALES,
    RECEIVE_ID_TYPES,
    bitable_condition_matches,
)
from tests.fakes.feishu_http import HttpAnswer

if TYPE_CHECKING:
    from tests.fakes.feishu import RecordedRequest

TOKEN_PATHS = ("/open-apis/auth/v3/tenant_access_token/internal", "/open-apis/auth/v3/app_access_token/internal")

# Feishu error codes used by the fake.
OK = 0
FIELD_VALIDATION = 99992402
MISSING_TOKEN = 99991661
INVALID_TOKEN = 99991663
INVALID_USER_TOKEN = 99991668
RATE_LIMITED = 99991400
INVALID_APP_ID = 10003
INVALID_APP_SECRET = 10014
BAD_CONTENT = 230001
CONTENT_TOO_LONG = 230025
MESSAGE_NOT_FOUND = 230011
REACTION_INVALID = 231001
REACTION_NOT_FOUND = 231003
RESOURCE_NOT_FOUND = 234003
UPLOAD_INVALID = 234001
CARD_INVALID = 300301
CARD_NOT_FOUND = 300302
CARD_ELEMENT_NOT_FOUND = 300303
CARD_STREAMING_CLOSED = 300309
CARD_SEQUENCE_CONFLICT = 300317
BITABLE_TABLE_NOT_FOUND = 1254004
DOC_NOT_FOUND = 1770002

UUID_WINDOW = 3600.0  # Feishu deduplicates a uuid for one hour
MAX_TEXT_BYTES = 150 * 1024
MAX_CARD_BYTES = 30 * 1024


class FeishuAPIError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(code, msg)
        self.code, self.msg, self.status = code, msg, status


class FeishuAPI:
    """Mixin: the endpoints. FakeFeishu supplies state (apps, tokens, messages, cards, ...) and _route()."""

    def _add_routes(self) -> None:
        r = self._route
        r("POST", "/open-apis/auth/v3/tenant_access_token/internal", self._h_tenant_token, auth=False)
        r("POST", "/open-apis/auth/v3/app_access_token/internal", self._h_tenant_token, auth=False)
        r("GET", "/open-apis/bot/v3/info", self._h_bot_info)
        r("POST", "/open-apis/im/v1/messages", self._h_message_create)
        r("POST", "/open-apis/im/v1/messages/:message_id/reply", self._h_message_reply)
        r("PATCH", "/open-apis/im/v1/messages/:message_id", self._h_message_patch)
        r("POST", "/open-apis/im/v1/messages/:message_id/reactions", self._h_reaction_create)
        r("DELETE", "/open-apis/im/v1/messages/:message_id/reactions/:reaction_id", self._h_reaction_delete)
        r("GET", "/open-apis/im/v1/messages/:message_id/resources/:file_key", self._h_resource_get)
        r("POST", "/open-apis/im/v1/images", self._h_image_upload)
        r("POST", "/open-apis/im/v1/files", self._h_file_upload)
        r("POST", "/open-apis/cardkit/v1/cards", self._h_card_create)
        r("PUT", "/open-apis/cardkit/v1/cards/:card_id", self._h_card_update)
        r("PUT", "/open-apis/cardkit/v1/cards/:card_id/elements/:element_id/content", self._h_card_content)
        r("PATCH", "/open-apis/cardkit/v1/cards/:card_id/settings", self._h_card_settings)
        r("POST", "/open-apis/search/v2/doc_wiki/search", self._h_doc_search)
        r("POST", "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records/search", self._h_bitable_search)
        r("GET", "/open-apis/docx/v1/documents/:document_id/raw_content", self._h_docx_raw)

    def _authenticate(self, rec: RecordedRequest) -> dict:
        header = rec.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise FeishuAPIError(
                MISSING_TOKEN, "Missing access token for authorization. Please make a request with token attached."
            )
        token = header[7:].strip()
        if token in self.user_tokens:
            return {"kind": "user", **self.user_tokens[token]}
        info = self.tokens.get(token)
        if info is None and token.startswith("u-"):
            raise FeishuAPIError(INVALID_USER_TOKEN, "Invalid access token for authorization (user token).")
        if info is None or info["revoked"] or info["expires_at"] < time.time():
            raise FeishuAPIError(
                INVALID_TOKEN, "Invalid access token for authorization. Please make a request with token attached."
            )
        return {"kind": "tenant", "app_id": info["app_id"]}

    # --- handlers: auth and bot ----------------------------------------------------------------------

    def _h_tenant_token(self, rec: RecordedRequest, auth: dict) -> dict:
        body = rec.json if isinstance(rec.json, dict) else {}
        app_id, secret = str(body.get("app_id") or ""), str(body.get("app_secret") or "")
        if not app_id or not secret:
            raise FeishuAPIError(INVALID_APP_ID, "app_id or app_secret is empty")
        app = self.apps.get(app_id)
        if app is None:
            if self.strict_apps:
                raise FeishuAPIError(INVALID_APP_ID, "invalid param: app_id not found")
            app = self.add_app(app_id, secret)
        if app["app_secret"] != secret:
            raise FeishuAPIError(INVALID_APP_SECRET, "app secret invalid")
        now = time.time()
        # like Feishu: the current token is returned again while it has more than 30 minutes left
        for token, info in self.tokens.items():
            if info["app_id"] == app_id and not info["revoked"] and info["expires_at"] - now > 1800:
                return self._token_answer(token, int(info["expires_at"] - now))
        token = "t-" + secrets.token_hex(16)
        self.tokens[token] = {"app_id": app_id, "expires_at": now + self.token_expire, "revoked": False}
        return self._token_answer(token, self.token_expire)

    @staticmethod
    def _token_answer(token: str, expire: int) -> dict:
        return {"code": 0, "msg": "ok", "tenant_access_token": token, "app_access_token": token, "expire": expire}

    def _h_bot_info(self, rec: RecordedRequest, auth: dict) -> dict:
        app = self.apps[auth["app_id"]]
        return {
            "code": 0,
            "msg": "ok",
            "bot": {
                "activate_status": 2, "app_name": app["name"], "avatar_url": "", "ip_white_list": [],
                "open_id": app["open_id"],
            },
        }  # fmt: skip

    # --- handlers: messages ----------------------------------------------------------------------

    def _h_message_create(self, rec: RecordedRequest, auth: dict) -> dict:
        receive_id_type = rec.query.get("receive_id_type", "")
        if receive_id_type not in RECEIVE_ID_TYPES:
            raise FeishuAPIError(FIELD_VALIDATION, f"field validation failed: receive_id_type {receive_id_type!r}")
        body = self._json_body(rec)
        receive_id = body.get("receive_id")
        if not isinstance(receive_id, str) or not receive_id:
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: receive_id is required")
        if receive_id_type == "chat_id":
            chat_id = receive_id
        else:
            chat_id = "oc_p2p_" + hashlib.sha256(f"{auth['app_id']}:{receive_id}".encode()).hexdigest()[:24]
        return self._send(rec, auth, body, chat_id=chat_id, parent=None)

    def _h_message_reply(self, rec: RecordedRequest, auth: dict, message_id: str) -> dict:
        body = self._json_body(rec)
        parent = self._messages_by_id.get(message_id)
        if parent is None and message_id not in self.known_message_ids and not message_id.startswith("om_"):
            raise FeishuAPIError(MESSAGE_NOT_FOUND, f"message {message_id} not found")
        reply_in_thread = bool(body.get("reply_in_thread"))
        chat_id = parent["chat_id"] if parent else "oc_chat_of_" + message_id
        return self._send(rec, auth, body, chat_id=chat_id, parent=message_id, reply_in_thread=reply_in_thread)

    def _send(
        self, rec: RecordedRequest, auth: dict, body: dict, *, chat_id: str, parent: str | None,
        reply_in_thread: bool = False,
    ) -> dict:  # fmt: skip
        msg_type = body.get("msg_type")
        if msg_type not in MSG_TYPES:
            raise FeishuAPIError(FIELD_VALIDATION, f"field validation failed: msg_type {msg_type!r}")
        uuid = body.get("uuid") or ""
        if not isinstance(uuid, str) or len(uuid) > 50:
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: uuid longer than 50 characters")
        content = self._validate_content(msg_type, body.get("content"))
        now = time.time()
        if uuid:
            seen = self._uuids.get((auth["app_id"], uuid))
            if seen and now - seen[1] < UUID_WINDOW:
                rec.deduplicated = True
                return {"code": 0, "msg": "success", "data": self._message_data(self._messages_by_id[seen[0]])}
        message_id = "om_" + secrets.token_hex(16)
        parent_msg = self._messages_by_id.get(parent) if parent else None
        message = {
            "message_id": message_id,
            "app_id": auth["app_id"],
            "chat_id": chat_id,
            "msg_type": msg_type,
            "content": content,
            "content_raw": body["content"],
            "uuid": uuid,
            "parent_id": parent or "",
            "root_id": (parent_msg or {}).get("root_id") or parent or "",
            "thread_id": ("omt_" + hashlib.sha256((parent or "").encode()).hexdigest()[:16]) if reply_in_thread else "",
            "reply_in_thread": reply_in_thread,
            "create_time": str(int(now * 1000)),
            "updates": [],
        }
        if msg_type == "interactive" and content.get("type") == "card":
            message["card_id"] = content["data"]["card_id"]
        elif msg_type == "interactive" and content.get("schema") == "2.0":
            # a card JSON 2.0 sent as is becomes a card entity too (cardkit id_convert finds it by message)
            message["card_id"] = self._card_entity(auth["app_id"], content)
        self._messages.append(message)
        self._messages_by_id[message_id] = message
        if uuid:
            self._uuids[(auth["app_id"], uuid)] = (message_id, now)
        return {"code": 0, "msg": "success", "data": self._message_data(message)}

    def _message_data(self, m: dict) -> dict:
        return {
            "message_id": m["message_id"], "root_id": m["root_id"], "parent_id": m["parent_id"],
            "thread_id": m["thread_id"], "msg_type": m["msg_type"], "create_time": m["create_time"],
            "update_time": m["create_time"], "deleted": False, "updated": bool(m["updates"]), "chat_id": m["chat_id"],
            "sender": {"id": m["app_id"], "id_type": "app_id", "sender_type": "app", "tenant_key": "fake-tenant"},
            "body": {"content": m["content_raw"]},
        }  # fmt: skip

    def _h_message_patch(self, rec: RecordedRequest, auth: dict, message_id: str) -> dict:
        body = self._json_body(rec)
        message = self._messages_by_id.get(message_id)
        if message is None or message["app_id"] != auth["app_id"]:
            raise FeishuAPIError(MESSAGE_NOT_FOUND, f"message {message_id} not found or not sent by this bot")
        if message["msg_type"] != "interactive":
            raise FeishuAPIError(BAD_CONTENT, "only interactive (card) messages can be patched")
        content = self._validate_content("interactive", body.get("content"))
        message["updates"].append(message["content"])
        message["content"], message["content_raw"] = content, body["content"]
        return {"code": 0, "msg": "success", "data": {}}

    def _validate_content(self, msg_type: str, raw: Any) -> dict:
        if not isinstance(raw, str):
            raise FeishuAPIError(BAD_CONTENT, "invalid message content: content must be a JSON string")
        limit = MAX_CARD_BYTES if msg_type == "interactive" else MAX_TEXT_BYTES
        if len(raw.encode()) > limit:
            raise FeishuAPIError(CONTENT_TOO_LONG, f"message content too long (>{limit} bytes)")
        try:
            content = json.loads(raw)
        except ValueError:
            raise FeishuAPIError(BAD_CONTENT, "invalid message content: not JSON")
        if not isinstance(content, dict):
            raise FeishuAPIError(BAD_CONTENT, "invalid message content: not a JSON object")
        problem = _content_problem(msg_type, content, self.cards, self.uploads)
        if problem:
            raise FeishuAPIError(BAD_CONTENT, f"invalid message content: {problem}")
        return content

    # --- handlers: reactions, resources, uploads -------------------------------------------------------

    def _h_reaction_create(self, rec: RecordedRequest, auth: dict, message_id: str) -> dict:
        body = self._json_body(rec)
        emoji = ((body.get("reaction_type") or {}).get("emoji_type")) or ""
        if emoji not in EMOJI_TYPES:
            raise FeishuAPIError(REACTION_INVALID, f"reaction type is invalid: {emoji!r}")
        reaction_id = "ZCaCIjUBVVWSrm5L-" + secrets.token_hex(6)
        self.reactions[reaction_id] = {
            "reaction_id": reaction_id, "message_id": message_id, "emoji_type": emoji, "app_id": auth["app_id"],
            "deleted": False, "action_time": str(int(time.time() * 1000)),
        }  # fmt: skip
        return {"code": 0, "msg": "success", "data": self._reaction_data(self.reactions[reaction_id])}

    def _h_reaction_delete(self, rec: RecordedRequest, auth: dict, message_id: str, reaction_id: str) -> dict:
        reaction = self.reactions.get(reaction_id)
        if reaction is None or reaction["message_id"] != message_id or reaction["deleted"]:
            raise FeishuAPIError(REACTION_NOT_FOUND, "reaction not found")
        reaction["deleted"] = True
        return {"code": 0, "msg": "success", "data": self._reaction_data(reaction)}

    @staticmethod
    def _reaction_data(r: dict) -> dict:
        return {
            "reaction_id": r["reaction_id"], "action_time": r["action_time"],
            "operator": {"operator_id": r["app_id"], "operator_type": "app"},
            "reaction_type": {"emoji_type": r["emoji_type"]},
        }  # fmt: skip

    def _h_resource_get(self, rec: RecordedRequest, auth: dict, message_id: str, file_key: str) -> Any:
        if rec.query.get("type") not in ("image", "file"):
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: type must be image or file")
        found = self.resources.get((message_id, file_key))
        if found is None and file_key in self.uploads:
            found = (self.uploads[file_key]["data"], self.uploads[file_key]["name"])
        if found is None:
            raise FeishuAPIError(RESOURCE_NOT_FOUND, "File not in msg.")
        data, name = found
        disposition = {"Content-Disposition": f'attachment; filename="{name}"'}
        return HttpAnswer(200, data, "application/octet-stream", disposition)

    def _h_image_upload(self, rec: RecordedRequest, auth: dict) -> dict:
        image = rec.files.get("image")
        if rec.form.get("image_type") not in ("message", "avatar") or image is None:
            raise FeishuAPIError(UPLOAD_INVALID, "invalid request: multipart image_type (message|avatar) and image")
        if image["size"] == 0 or image["size"] > 10 * 1024 * 1024:
            raise FeishuAPIError(UPLOAD_INVALID, "image must be 1 byte .. 10 MiB")
        key = "img_v3_" + secrets.token_hex(12)
        self.uploads[key] = {
            "kind": "image",
            "data": image["data"],
            "name": image["filename"],
            "app_id": auth["app_id"],
        }
        return {"code": 0, "msg": "success", "data": {"image_key": key}}

    def _h_file_upload(self, rec: RecordedRequest, auth: dict) -> dict:
        upload = rec.files.get("file")
        if rec.form.get("file_type") not in FILE_TYPES or not rec.form.get("file_name") or upload is None:
            raise FeishuAPIError(UPLOAD_INVALID, "invalid request: multipart file_type, file_name and file")
        if upload["size"] == 0 or upload["size"] > 30 * 1024 * 1024:
            raise FeishuAPIError(UPLOAD_INVALID, "file must be 1 byte .. 30 MiB")
        key = "file_v3_" + secrets.token_hex(12)
        self.uploads[key] = {
            "kind": "file",
            "data": upload["data"],
            "name": rec.form["file_name"],
            "app_id": auth["app_id"],
        }
        return {"code": 0, "msg": "success", "data": {"file_key": key}}

    # --- handlers: CardKit ----------------------------------------------------------------------

    def _h_card_create(self, rec: RecordedRequest, auth: dict) -> dict:
        card_id = self._card_entity(auth["app_id"], _card_json(self._json_body(rec)))
        return {"code": 0, "msg": "success", "data": {"card_id": card_id}}

    def _card_entity(self, app_id: str, card: dict) -> str:
        """Store a card entity; returns its card_id."""
        card_id = f"7{secrets.randbelow(10**18):018d}"
        elements: dict[str, dict] = {}
        _collect_elements(card, elements)
        self.cards[card_id] = {
            "card_id": card_id, "app_id": app_id, "card": card, "sequence": 0, "elements": elements,
            "streaming_mode": bool((card.get("config") or {}).get("streaming_mode")), "operations": [],
            "uuids": set(),
        }  # fmt: skip
        return card_id

    def _card_operation(self, auth: dict, card_id: str, body: dict) -> dict | None:
        """Common CardKit checks; returns the card, or None when the uuid was already applied."""
        card = self.cards.get(card_id)
        if card is None or card["app_id"] != auth["app_id"]:
            raise FeishuAPIError(CARD_NOT_FOUND, f"card {card_id} not found")
        sequence = body.get("sequence")
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: sequence is required")
        uuid = body.get("uuid") or ""
        if uuid and uuid in card["uuids"]:
            return None
        if sequence <= card["sequence"]:
            raise FeishuAPIError(
                CARD_SEQUENCE_CONFLICT, f"sequence number compare failed: {sequence} <= {card['sequence']}"
            )
        return card

    def _h_card_update(self, rec: RecordedRequest, auth: dict, card_id: str) -> dict:
        """Full update: the new card JSON replaces everything (content, config incl. streaming_mode)."""
        body = self._json_body(rec)
        card = self._card_operation(auth, card_id, body)
        if card is None:
            return {"code": 0, "msg": "success", "data": {}}
        if not isinstance(body.get("card"), dict):
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: card is required")
        new = _card_json(body["card"])
        if (new.get("config") or {}).get("update_multi") is False:
            raise FeishuAPIError(CARD_INVALID, "a full update cannot make the card exclusive (update_multi false)")
        elements: dict[str, dict] = {}
        _collect_elements(new, elements)
        card["card"], card["elements"] = new, elements
        card["streaming_mode"] = bool((new.get("config") or {}).get("streaming_mode"))
        card["sequence"] = body["sequence"]
        card["operations"].append({"op": "update", "sequence": body["sequence"], "card": new})
        if body.get("uuid"):
            card["uuids"].add(body["uuid"])
        return {"code": 0, "msg": "success", "data": {}}

    def _h_card_content(self, rec: RecordedRequest, auth: dict, card_id: str, element_id: str) -> dict:
        body = self._json_body(rec)
        card = self._card_operation(auth, card_id, body)
        if card is None:
            return {"code": 0, "msg": "success", "data": {}}
        if element_id not in card["elements"]:
            raise FeishuAPIError(CARD_ELEMENT_NOT_FOUND, f"element {element_id} not found in card")
        if not card["streaming_mode"]:
            raise FeishuAPIError(CARD_STREAMING_CLOSED, "card is not in streaming mode")
        if not isinstance(body.get("content"), str):
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: content must be a string")
        card["sequence"] = body["sequence"]
        card["elements"][element_id]["content"] = body["content"]
        card["operations"].append({"op": "content", "element_id": element_id, "sequence": body["sequence"],
                                   "content": body["content"]})  # fmt: skip
        if body.get("uuid"):
            card["uuids"].add(body["uuid"])
        return {"code": 0, "msg": "success", "data": {}}

    def _h_card_settings(self, rec: RecordedRequest, auth: dict, card_id: str) -> dict:
        body = self._json_body(rec)
        card = self._card_operation(auth, card_id, body)
        if card is None:
            return {"code": 0, "msg": "success", "data": {}}
        try:
            settings = json.loads(body.get("settings") or "")
        except ValueError:
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: settings must be a JSON string")
        config = settings.get("config") or {}
        if "streaming_mode" in config:
            card["streaming_mode"] = bool(config["streaming_mode"])
        card["card"].setdefault("config", {}).update(config)
        card["sequence"] = body["sequence"]
        card["operations"].append({"op": "settings", "sequence": body["sequence"], "settings": settings})
        if body.get("uuid"):
            card["uuids"].add(body["uuid"])
        return {"code": 0, "msg": "success", "data": {}}

    # --- handlers: docs, bitable ----------------------------------------------------------------------

    def _h_doc_search(self, rec: RecordedRequest, auth: dict) -> dict:
        if self.require_user_token_for_search and auth.get("kind") != "user":
            raise FeishuAPIError(99991672, "Access denied: this API needs a user_access_token", status=400)
        body = self._json_body(rec)
        query = str(body.get("query") or "")
        page_size = body.get("page_size", 20)
        if not isinstance(page_size, int) or not 0 < page_size <= 20:
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: page_size must be 1..20")
        offset = int(body.get("page_token") or 0)
        hits = [d for d in self.docs if query.lower() in (d["title"] + " " + d["text"]).lower()]
        page = hits[offset : offset + page_size]
        units = [
            {
                "entity_type": d["entity_type"],
                "title_highlighted": _highlight(d["title"], query),
                "summary_highlighted": _highlight(d["text"][:120], query),
                "result_meta": {
                    "token": d["token"], "url": _doc_url(d),
                    "doc_types": d["doc_type"], "owner_name": d["owner_name"], "update_time": d["update_time"],
                },
            }
            for d in page
        ]  # fmt: skip
        more = offset + page_size < len(hits)
        data = {
            "res_units": units,
            "total": len(hits),
            "has_more": more,
            "page_token": str(offset + page_size) if more else "",
        }
        return {"code": 0, "msg": "success", "data": data}

    def _h_bitable_search(self, rec: RecordedRequest, auth: dict, app_token: str, table_id: str) -> dict:
        records = self.bitables.get((app_token, table_id))
        if records is None:
            raise FeishuAPIError(BITABLE_TABLE_NOT_FOUND, "WrongTableId or base not found")
        page_size = int(rec.query.get("page_size", 20))
        if not 0 < page_size <= 500:
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: page_size must be 1..500")
        body = rec.json if isinstance(rec.json, dict) else {}
        flt = body.get("filter") or {}
        conditions = flt.get("conditions") or []
        for c in conditions:
            if c.get("operator") not in BITABLE_OPERATORS:
                raise FeishuAPIError(FIELD_VALIDATION, f"field validation failed: operator {c.get('operator')!r}")
        combine = any if flt.get("conjunction") == "or" else all
        hits = [
            r
            for r in records
            if not conditions or combine(bitable_condition_matches(r["fields"], c) for c in conditions)
        ]
        for s in reversed(body.get("sort") or []):
            hits.sort(key=lambda r, s=s: str(r["fields"].get(s.get("field_name"), "")) if not isinstance(
                r["fields"].get(s.get("field_name")), int | float) else r["fields"][s["field_name"]],
                reverse=bool(s.get("desc")))  # fmt: skip
        names = body.get("field_names")
        offset = int(rec.query.get("page_token") or 0)
        page = hits[offset : offset + page_size]
        items = [
            {"record_id": r["record_id"], "fields": {k: v for k, v in r["fields"].items() if not names or k in names}}
            for r in page
        ]
        more = offset + page_size < len(hits)
        data = {
            "items": items,
            "has_more": more,
            "page_token": str(offset + page_size) if more else "",
            "total": len(hits),
        }
        return {"code": 0, "msg": "success", "data": data}

    def _h_docx_raw(self, rec: RecordedRequest, auth: dict, document_id: str) -> dict:
        if document_id not in self.documents:
            raise FeishuAPIError(DOC_NOT_FOUND, "document not found", status=404)
        return {"code": 0, "msg": "success", "data": {"content": self.documents[document_id]}}

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _json_body(rec: RecordedRequest) -> dict:
        if not isinstance(rec.json, dict):
            raise FeishuAPIError(FIELD_VALIDATION, "field validation failed: body must be a JSON object")
        return rec.json


def _card_json(body: dict) -> dict:
    """The card JSON 2.0 of a CardKit `{"type": "card_json", "data": "<JSON string>"}`, checked."""
    if body.get("type") != "card_json" or not isinstance(body.get("data"), str):
        raise FeishuAPIError(CARD_INVALID, "type must be card_json and data a JSON string")
    if len(body["data"].encode()) > MAX_CARD_BYTES:
        raise FeishuAPIError(CARD_INVALID, f"card JSON too long (>{MAX_CARD_BYTES} bytes)")
    try:
        card = json.loads(body["data"])
    except ValueError:
        raise FeishuAPIError(CARD_INVALID, "card data is not JSON") from None
    if (
        not isinstance(card, dict)
        or card.get("schema") != "2.0"
        or not isinstance((card.get("body") or {}).get("elements"), list)
    ):
        raise FeishuAPIError(CARD_INVALID, 'card JSON 2.0 needs "schema": "2.0" and body.elements')
    return card


def _collect_elements(node: Any, out: dict[str, dict]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("element_id"), str):
            out[node["element_id"]] = {"tag": node.get("tag"), "content": node.get("content", "")}
        for value in node.values():
            _collect_elements(value, out)
    elif isinstance(node, list):
        for value in node:
            _collect_elements(value, out)


def _doc_url(doc: dict) -> str:
    kind = "wiki" if doc["entity_type"] == "WIKI" else "docx"
    return f"https://fake.feishu.cn/{kind}/{doc['token']}"


def _highlight(text: str, query: str) -> str:
    if not query:
        return text
    return re.sub(re.escape(query), lambda m: f"<h>{m.group(0)}</h>", text, flags=re.IGNORECASE)


def _content_problem(msg_type: str, c: dict, cards: dict, uploads: dict) -> str:
    """Why `c` is not valid content for `msg_type` ("" when it is)."""
    if msg_type == "text":
        return "" if isinstance(c.get("text"), str) and c["text"].strip() else 'text needs a non-empty "text"'
    if msg_type == "post":
        posts = [v for k, v in c.items() if k in POST_LOCALES] or ([c] if "content" in c else [])
        if not posts:
            return "post needs a locale (zh_cn, en_us, ...) with title/content"
        for post in posts:
            rows = post.get("content") if isinstance(post, dict) else None
            if not isinstance(rows, list) or not all(
                isinstance(row, list) and all(isinstance(el, dict) and el.get("tag") for el in row) for row in rows
            ):
                return "post content must be a list of rows of elements with a tag"
        return ""
    if msg_type == "image":
        key = c.get("image_key")
        return "" if isinstance(key, str) and (key in uploads or key.startswith("img_")) else "unknown image_key"
    if msg_type in ("file", "audio", "media", "sticker"):
        return "" if isinstance(c.get("file_key"), str) and c["file_key"] else f"{msg_type} needs file_key"
    if msg_type == "share_chat":
        return "" if c.get("chat_id") else "share_chat needs chat_id"
    if msg_type == "share_user":
        return "" if c.get("user_id") else "share_user needs user_id"
    if msg_type == "interactive":
        if c.get("type") == "card":
            card_id = (c.get("data") or {}).get("card_id")
            return "" if card_id in cards else f"card_id {card_id!r} not found"
        if c.get("type") == "template":
            return "" if (c.get("data") or {}).get("template_id") else "template needs data.template_id"
        if c.get("schema") == "2.0":
            return "" if isinstance((c.get("body") or {}).get("elements"), list) else "card 2.0 needs body.elements"
        if isinstance(c.get("elements"), list) or isinstance(c.get("i18n_elements"), dict) or c.get("header"):
            return ""
        return "not a card (schema 2.0 body.elements, elements, or type card/template)"
    return f"unsupported msg_type {msg_type}"
