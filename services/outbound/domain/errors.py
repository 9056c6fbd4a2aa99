"""The outbound service's domain errors; services.runtime.errors maps each to its gRPC status in one place."""

from __future__ import annotations

import datetime as dt
from enum import Enum

from services.runtime.errors import InvalidArgument, ResourceExhausted


class InvalidEmail(InvalidArgument):
    """A field of the email to send is unusable; `field` names it (e.g. "subject", "to[2].display_name")."""

    reason = "INVALID_EMAIL"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", field=field)
        self.field = field
        self.problem = problem


class HeaderInjection(InvalidEmail):
    """A header field holds a control character, a line break or encoded-word syntax that could forge headers."""

    reason = "HEADER_INJECTION"


class TooManyRecipients(InvalidEmail):
    reason = "TOO_MANY_RECIPIENTS"


class AttachmentsTooLarge(InvalidEmail):
    """The attachments of one message exceed the configured total (R14: 25 MB by default)."""

    reason = "ATTACHMENTS_TOO_LARGE"


class MessageTooLarge(InvalidEmail):
    """The encoded message exceeds Gmail's 36,700,160-byte cap for messages.send."""

    reason = "MESSAGE_TOO_LARGE"


class QuotaCause(Enum):
    """Why sending is closed: our own rolling ledger, or Gmail's own sending-limit answer."""

    ROLLING_LIMIT = "ROLLING_LIMIT"
    GMAIL_BLOCK = "GMAIL_BLOCK"


class QuotaExceeded(ResourceExhausted):
    """The mailbox may not send now (R14); `retry_time` is when sending is possible again."""

    reason = "SEND_QUOTA_EXCEEDED"

    def __init__(
        self,
        *,
        mailbox_id: str,
        retry_time: dt.datetime,
        cause: QuotaCause,
        daily_limit: int,
        mailbox_email: str = "",
    ) -> None:
        # The Gmail address is what a person recognises; the internal id stays in the details for support.
        why = (
            f"its {daily_limit} sends of the last 24 hours are used"
            if cause is QuotaCause.ROLLING_LIMIT
            else "Gmail refused sending with its own sending limit"
        )
        super().__init__(
            f"{mailbox_email or f'mailbox {mailbox_id}'} may not send until {retry_time.isoformat()}: {why}",
            mailbox_id=mailbox_id,
            mailbox_email=mailbox_email,
            retry_time=retry_time.isoformat(),
            cause=cause.value,
            daily_limit=daily_limit,
        )
        self.mailbox_id = mailbox_id
        self.mailbox_email = mailbox_email
        self.retry_time = retry_time
        self.cause = cause
        self.daily_limit = daily_limit
