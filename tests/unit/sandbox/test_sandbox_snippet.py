"""Unit: the snippet the sandbox derives from a message, and that it costs linear time on hostile HTML
(issue 16: 10 MB of `<` in an HTML part made the tag-stripping regex run for hours)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from sandbox import mime

TEN_MB = 10 * 1024 * 1024


def html_message(body: bytes) -> bytes:
    return (
        b"From: Carol <carol@outside.test>\r\nTo: alice@example.com\r\nSubject: html\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n" + body
    )


@given(st.text(alphabet="<>a \n/", max_size=60))
def test_strip_tags_replaces_exactly_what_the_tag_pattern_matches(html: str) -> None:
    """The linear version gives the same text as re.sub(r"<[^>]+>", " ", ...) on every input."""
    assert mime.strip_tags(html) == re.sub(r"<[^>]+>", " ", html)


def test_snippet_of_html_drops_tags_and_collapses_spaces() -> None:
    parsed = mime.parse(html_message(b"<html><body><p>Hello</p>\r\n  <p>world &amp; all</p></body></html>"))
    assert parsed.snippet == "Hello world &amp; all"


def test_ten_megabytes_of_unclosed_angle_brackets_are_text() -> None:
    """No `>` anywhere: nothing is a tag, the snippet is the first 200 characters."""
    parsed = mime.parse(html_message(b"<" * TEN_MB))
    assert parsed.snippet == "<" * 200


def test_a_tag_after_ten_megabytes_of_angle_brackets_still_closes_them() -> None:
    """Everything from the first `<` to the first `>` is one tag, as the pattern reads it; the text after stays."""
    parsed = mime.parse(html_message(b"<" * TEN_MB + b"<b>Hello</b> there"))
    assert parsed.snippet == "Hello there"
