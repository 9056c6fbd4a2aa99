"""What kind of Google account a connected mailbox is, from Google's own answer: the ID token that Google's token
endpoint returns with the grant carries `hd` (the hosted domain) only for a Google Workspace account.

The token is read without checking its signature: it came straight from Google's token endpoint over TLS, which
OpenID Connect Core (section 3.1.3.7) accepts in place of the signature for a token the client received
itself. Without an ID token (the openid scope was not granted) Google said nothing, and the type stays UNKNOWN:
outbound then holds the mailbox to the lower, consumer limit until a limit is set for it.
"""

from __future__ import annotations

from enum import StrEnum

from google.auth import jwt

from services.auth.domain import CONSUMER_GMAIL_DOMAINS


class AccountType(StrEnum):
    CONSUMER = "CONSUMER"
    WORKSPACE = "WORKSPACE"
    UNKNOWN = "UNKNOWN"


def account_type_of(id_token: str | None, email: str) -> AccountType:
    """The account type Google's ID token says; a gmail.com address is a consumer account whatever it says."""
    if email.rpartition("@")[2].strip().lower() in CONSUMER_GMAIL_DOMAINS:
        return AccountType.CONSUMER
    if not id_token:
        return AccountType.UNKNOWN
    try:
        claims = jwt.decode(id_token, verify=False)
    except (ValueError, TypeError):
        return AccountType.UNKNOWN
    return AccountType.WORKSPACE if claims.get("hd") else AccountType.CONSUMER
