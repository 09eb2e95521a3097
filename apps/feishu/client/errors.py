"""Feishu error codes and the one exception the client layer raises."""

from __future__ import annotations

# Feishu error codes (https://open.feishu.cn/document/server-docs/api-call-guide/generic-error-code)
RATE_LIMITED = 99991400
CHAT_RATE_LIMITED = 230020  # IM: sending to one chat too fast (about 5/s per chat); transient
TOKEN_ERRORS = frozenset({99991661, 99991663, 99991664, 99991668})
PERMANENT_ERRORS = frozenset({230001, 99991672, 99991676, 99991679})
CARD_SEQUENCE_CONFLICT = 300317
# Our own codes for failures that never reached a Feishu answer.
NETWORK_ERROR = -1
BAD_RESPONSE = -2

# token endpoint codes that will not get better by retrying (bad app id / secret)
TOKEN_PERMANENT = frozenset({10003, 10014, BAD_RESPONSE})


class FeishuError(Exception):
    """A Feishu call that failed for good: a permanent error, or a transient one after all retries."""

    def __init__(
        self, code: int, msg: str, log_id: str = "", http_status: int = 0, retryable: bool = False, attempts: int = 1
    ) -> None:
        super().__init__(code, msg, log_id, http_status, retryable)
        self.code = code
        self.msg = msg
        self.log_id = log_id or ""
        self.http_status = http_status
        self.retryable = retryable
        self.attempts = attempts  # HTTP attempts made, retries included

    def __str__(self) -> str:
        where = f"http {self.http_status}" if self.http_status else "no http answer"
        tries = f", {self.attempts} attempts" if self.attempts > 1 else ""
        return f"Feishu {self.code}: {self.msg} ({where}, log_id {self.log_id or '-'}{tries})"
