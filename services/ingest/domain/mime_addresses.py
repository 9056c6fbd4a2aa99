"""Address fields read by the grammar of RFC 5322 section 3.4 (with its obsolete forms) and RFC 2047 section 5,
in one linear pass per field.

An encoded word is one opaque atom: whatever its text holds (`:`, `;`, `@`, `<`, `,`) is never structure, so
`From: =?utf-8?q?x:ceo@company.test;?= <attacker@evil.test>` is the mailbox attacker@evil.test with a display
name, which is also what a receiving MTA and DMARC see. The address is always the addr-spec (inside the angle
brackets when there are some), never anything in the display name. In From and Sender (mailbox lists) a group is
not allowed, so its members are never taken as an author. Anything the grammar had to recover from (an unclosed
quote or bracket, text after `>`, a second angle address, a special character where a word belongs) marks the
address not `clean`, which the strict reader of a BCC drop's author refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message

from services.ingest.domain.mime_charsets import decode_fallback
from services.ingest.domain.mime_headers import clean_header_text, raw_values
from services.ingest.domain.mime_limits import MimeLimits
from services.ingest.domain.mime_words import ENCODED_WORD_ATOM, decode_encoded_words, header_bytes

_FOLD = re.compile(r"\r\n|\r|\n")
MAILBOX_LIST_FIELDS = frozenset({"from", "sender", "resent-from", "resent-sender"})

_LEXER = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
    |(?P<ew>"""
    + ENCODED_WORD_ATOM.pattern
    + r""")
    |(?P<qs>"(?:[^"\\]|\\.)*"?)
    |(?P<dl>\[(?:[^\[\]\\]|\\.)*\]?)
    |(?P<comment>\()
    |(?P<atom>[^\s()<>\[\]:;@\\,."]+)
    |(?P<special>[\s\S])
    """,
    re.VERBOSE,
)
_QUOTED_PAIR = re.compile(r"\\([\s\S])")
# The shapes nearly every address list has, read in one regex without tokenizing: `a@b`, `<a@b>`, `Name <a@b>`
# and `"Name" <a@b>`, plain ASCII without encoded words, separated by commas. A property test checks that this
# agrees with the grammar below; anything else takes the grammar.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOMAIN_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*"


def _simple_address_pattern(named: bool) -> str:
    def group(name: str) -> str:
        return f"?P<{name}>" if named else "?:"

    return (
        rf"(?:({group('bare')}{_SIMPLE_SPEC})"
        rf'|(?:"({group("quoted")}[^"\\\r\n]*)"|({group("phrase")}{_ATOM}(?:[ \t]+{_ATOM})*))?[ \t]*'
        rf"<({group('angle')}{_SIMPLE_SPEC})>)"
    )


_SIMPLE_ONE = re.compile(_simple_address_pattern(named=True))
_SIMPLE_LIST = re.compile(
    rf"[ \t]*{_simple_address_pattern(False)}(?:[ \t]*,[ \t]*{_simple_address_pattern(False)})*[ \t]*"
)
_DOT_ATOM = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+)*"
)


@dataclass(frozen=True)
class ReadAddress:
    email: str
    display_name: str
    # False when the grammar had to recover from something in this address (a strict reader refuses those).
    clean: bool


@dataclass(frozen=True)
class _Token:
    kind: str  # ws, ew, qs, dl, comment, atom, or the special character itself
    text: str
    start: int
    # Whitespace or a comment came before it (phrase words are then joined by one space).
    spaced: bool = False


@dataclass
class _Item:
    """One mailbox as written: the words before `<`, the angle address, what followed it."""

    phrase: list[_Token] = field(default_factory=list)
    angle: list[_Token] | None = None
    after_angle: list[_Token] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    clean: bool = True
    start: int = 0
    end: int = 0
    in_group: bool = False


def tokens_of(value: str) -> list[_Token]:
    """The lexical tokens of an address field (whitespace kept as tokens; comments as their text)."""
    tokens: list[_Token] = []
    position = 0
    while position < len(value):
        match = _LEXER.match(value, position)
        assert match is not None  # the last alternative matches any character
        kind = match.lastgroup or "special"
        if kind == "comment":
            end = _comment_end(value, position)
            tokens.append(_Token("comment", value[position + 1 : end].rstrip(")"), position))
            position = end
            continue
        text = match.group(0)
        tokens.append(_Token(text if kind == "special" else kind, text, position))
        position = match.end()
    return tokens


def _comment_end(value: str, start: int) -> int:
    """Where the (nested) comment starting at `start` ends; the end of the field if it is never closed."""
    depth = 0
    index = start
    while index < len(value):
        char = value[index]
        if char == "\\":
            index += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return len(value)


def simple_address_list(value: str) -> list[ReadAddress] | None:
    """The addresses of a field in the common shapes (see `_SIMPLE_LIST`), or None when it has another shape."""
    if "=?" in value or not value.isascii() or _SIMPLE_LIST.fullmatch(value) is None:
        return None
    return [
        ReadAddress(
            (simple.group("bare") or simple.group("angle")).lower(),
            clean_header_text(simple.group("quoted") or simple.group("phrase") or ""),
            True,
        )
        for simple in _SIMPLE_ONE.finditer(value)
    ]


def parse_address_list(value: str, *, mailbox_list: bool = False) -> list[ReadAddress]:
    """Every address of one field value, in order, by the grammar. `mailbox_list` for From and Sender, where a
    group's members are not addresses (the group syntax is reserved for fields that list recipients)."""
    found: list[ReadAddress] = []
    for item in _items(_spaced(tokens_of(value))):
        if item.in_group and mailbox_list:
            continue
        address = _resolve(item)
        if address is not None:
            found.append(address)
    return found


def _spaced(tokens: list[_Token]) -> list[_Token]:
    """Whitespace and comments folded into the next token's `spaced` flag; comments stay (for display names)."""
    result: list[_Token] = []
    spaced = False
    for token in tokens:
        if token.kind == "ws":
            spaced = True
            continue
        result.append(_Token(token.kind, token.text, token.start, spaced))
        spaced = token.kind == "comment"
    return result


def _items(tokens: list[_Token]) -> list[_Item]:
    items: list[_Item] = []
    in_group = False
    item = _Item()
    index = 0

    def close(at: int) -> None:
        nonlocal item
        item.end = at
        if item.phrase or item.angle is not None:
            items.append(item)
        item = _Item(start=at, in_group=in_group)

    while index < len(tokens):
        token = tokens[index]
        if token.kind == "comment":
            item.comments.append(token.text)
        elif token.kind == "<":
            if item.angle is not None:
                item.clean = False  # a second angle address: the first one stands
            angle: list[_Token] = []
            index += 1
            while index < len(tokens) and tokens[index].kind != ">":
                angle.append(tokens[index])
                index += 1
            if index >= len(tokens):
                item.clean = False  # never closed
            if item.angle is None:
                item.angle = angle
        elif token.kind == ",":
            close(token.start)
        elif token.kind == ":" and item.angle is None and not in_group:
            # A group's display name; its members follow until ";".
            in_group = True
            item = _Item(start=token.start, in_group=True)
        elif token.kind == ";":
            if not in_group:
                item.clean = False
            close(token.start)
            in_group = False
            item.in_group = False
        elif item.angle is not None:
            item.after_angle.append(token)
        else:
            item.phrase.append(token)
        index += 1
    close(tokens[-1].start + len(tokens[-1].text) if tokens else 0)
    if in_group and items and items[-1].in_group:
        items[-1].clean = False  # a group never closed by ";"
    return items


def _resolve(item: _Item) -> ReadAddress | None:
    if item.angle is not None:
        spec = _addr_spec(_without_route(item.angle))
        if spec is None:
            return None
        email_address, spec_clean = spec
        display_name, phrase_clean = _phrase_text(item.phrase)
        clean = item.clean and spec_clean and phrase_clean and not item.after_angle
        return ReadAddress(email_address, display_name, clean)
    spec = _addr_spec(item.phrase)
    if spec is None:
        return None
    email_address, spec_clean = spec
    # `addr (Name)`: the obsolete way to give a display name, still written by some mailers.
    display_name = clean_header_text(" ".join(item.comments))
    return ReadAddress(email_address, display_name, item.clean and spec_clean)


def _without_route(tokens: list[_Token]) -> list[_Token]:
    """An obsolete source route (`<@relay1,@relay2:user@example.com>`) is dropped: only the last hop counts."""
    kinds = [token.kind for token in tokens if token.kind != "comment"]
    if kinds[:1] == ["@"] and ":" in kinds:
        last_colon = max(index for index, token in enumerate(tokens) if token.kind == ":")
        return tokens[last_colon + 1 :]
    return tokens


def _addr_spec(tokens: list[_Token]) -> tuple[str, bool] | None:
    """local-part "@" domain from the tokens (comments skipped); None when there is no address."""
    words = [token for token in tokens if token.kind != "comment"]
    at_positions = [index for index, token in enumerate(words) if token.kind == "@"]
    if len(at_positions) != 1:
        return None
    local_tokens, domain_tokens = words[: at_positions[0]], words[at_positions[0] + 1 :]
    clean = True
    local_parts: list[str] = []
    for token in local_tokens:
        if token.kind in ("atom", "ew", "."):
            local_parts.append(token.text)
        elif token.kind == "qs":
            local_parts.append(_unquoted(token.text))
        else:
            return None
    domain_parts: list[str] = []
    for token in domain_tokens:
        if token.kind in ("atom", "."):
            domain_parts.append(token.text)
        elif token.kind == "dl":
            domain_parts.append(token.text)
            clean = clean and token.text.endswith("]")
        else:
            return None
    local, domain = "".join(local_parts), "".join(domain_parts)
    if not local or not domain:
        return None
    if not _DOT_ATOM.fullmatch(local):
        # Quoting is only right when the sender quoted; otherwise specials came from an encoded word or junk.
        clean = clean and any(token.kind == "qs" for token in local_tokens)
        escaped = local.replace("\\", "\\\\").replace('"', '\\"')
        local = f'"{escaped}"'
    if not (domain.startswith("[") or _DOT_ATOM.fullmatch(domain)):
        clean = False
    if any(token.kind == "qs" and not token.text.endswith('"') for token in local_tokens):
        clean = False
    return clean_header_text(f"{local}@{domain}").lower(), clean


def _phrase_text(tokens: list[_Token]) -> tuple[str, bool]:
    """The display name: words joined by single spaces, encoded words decoded (adjacent ones joined)."""
    words: list[str] = []
    clean = True
    index = 0
    while index < len(tokens):
        token = tokens[index]
        separator = " " if token.spaced and words else ""
        if token.kind == "ew":
            run = [token.text]
            index += 1
            while index < len(tokens) and tokens[index].kind == "ew":
                run.append(tokens[index].text)
                index += 1
            words.append(separator + decode_encoded_words(" ".join(run), []))
            continue
        if token.kind == "qs":
            clean = clean and token.text.endswith('"') and len(token.text) > 1
            inner = _unquoted(token.text)
            # Encoded words inside quotes are not allowed by RFC 2047, but Outlook writes them.
            text = decode_encoded_words(inner, []) if "=?" in inner else decode_fallback(header_bytes(inner))
            words.append(separator + text)
        elif token.kind in ("atom", "."):
            words.append(separator + decode_fallback(header_bytes(token.text)))
        else:
            # "@", "[", "]", "\\" or an unbalanced ")" where only words belong.
            clean = False
            words.append(separator + token.text)
        index += 1
    return clean_header_text("".join(words)), clean


def _unquoted(quoted: str) -> str:
    inner = quoted[1:-1] if len(quoted) > 1 and quoted.endswith('"') else quoted[1:]
    return _QUOTED_PAIR.sub(r"\1", inner)


def _simple_length(address: ReadAddress) -> int:
    return len(address.email) + len(address.display_name) + 5


class AddressReader:
    """Reads the address fields of one message: at most `max_participants` addresses, each at most
    `max_address_bytes` long, and `max_address_bytes_total` bytes of addresses in all."""

    def __init__(self, limits: MimeLimits) -> None:
        self._remaining = limits.max_address_bytes_total
        self._remaining_count = limits.max_participants
        self._longest = limits.max_address_bytes
        self._exhausted = False

    def _take(self, length: int, defects: list[str]) -> bool:
        """Whether one more address of `length` characters fits the budget (after which it is counted)."""
        if length > self._longest:
            defects.append("limit:address_bytes")
            return False
        if length > self._remaining or not self._remaining_count:
            defects.append("limit:address_bytes_total")
            self._exhausted = True
            return False
        self._remaining -= length
        self._remaining_count -= 1
        return True

    def read(self, message: Message, name: str, defects: list[str]) -> list[ReadAddress]:
        """Every address of every `name` field in header order; emails are lower-cased."""
        return self.read_values(raw_values(message, name), name, defects)

    def read_values(self, raw_field_values: list[str], name: str, defects: list[str]) -> list[ReadAddress]:
        """As `read`, given the raw values of the `name` fields."""
        found: list[ReadAddress] = []
        mailbox_list = name.lower() in MAILBOX_LIST_FIELDS
        for raw_value in raw_field_values:
            # Lexed as the parser left it (8-bit bytes as surrogate escapes): each word is decoded on its own.
            value = _FOLD.sub("", raw_value)
            simple = simple_address_list(value)
            if simple is not None:
                for address in simple:
                    if not self._take(_simple_length(address), defects):
                        if self._exhausted:
                            return found
                        continue
                    found.append(address)
                continue
            tokens = _spaced(tokens_of(value))
            for item in _items(tokens):
                if item.in_group and mailbox_list:
                    defects.append("address_group_in_mailbox_list")
                    continue
                resolved = _resolve(item)
                if resolved is None:
                    continue  # no address in it (a group's leftovers, or noise)
                if not self._take(item.end - item.start, defects):
                    if self._exhausted:
                        return found
                    continue
                if not resolved.clean:
                    defects.append("address_malformed")
                found.append(resolved)
        return found
