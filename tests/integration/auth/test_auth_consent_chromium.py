"""The connect flow in a real browser: headless Chromium opens the authorization URL, the user presses Continue
on the sandbox's consent page, Google's redirect reaches the auth service's callback, and the connection is made
(R1). Unticking a permission in the browser ends on a page that names it."""

from __future__ import annotations

import json

from mailsync.v1 import auth_pb2, common_pb2
from tests.fixtures.auth_service import AuthWorld
from tests.fixtures.chromium import HeadlessChromium

ALICE = "alice@example.com"


async def consent_in_browser(
    world: AuthWorld, browser: HeadlessChromium, location_id: str, *, untick: str | None = None
) -> tuple[str, str]:
    """Runs the consent in the browser; returns the final page's outcome and text."""
    begun = await world.crm.BeginConnect(auth_pb2.BeginConnectRequest(user_id="u1", location_id=location_id))
    page = await browser.page()
    try:
        await page.open(begun.authorization_url)
        await page.wait_until("document.querySelector('button[value=allow]') !== null")
        untick_js = (
            f"document.querySelector('input[name=scope][value={json.dumps(untick)}]').click();"
            if untick
            else ""
        )
        await page.evaluate(
            f"""(() => {{
                document.querySelector('input[name=email]').value = {json.dumps(ALICE)};
                document.querySelector('input[name=password]').value = 'password';
                {untick_js}
                document.querySelector('button[value=allow]').click();
            }})()"""
        )
        outcome = await page.wait_until("document.getElementById('result')?.dataset.outcome")
        text = await page.evaluate("document.body.innerText")
        url = await page.evaluate("location.href")
    finally:
        await page.close()
    assert url.startswith(world.settings.oauth_redirect_uri + "?")
    return outcome, text


async def test_R1_consent_in_headless_chromium_ends_connected(
    auth_world: AuthWorld, headless_chromium: HeadlessChromium
) -> None:
    auth_world.sandbox.create_mailbox(ALICE)
    await auth_world.add_user("u1")

    outcome, text = await consent_in_browser(auth_world, headless_chromium, "loc-1")

    assert outcome == "connected" and "Gmail connected" in text and ALICE in text
    connection = await auth_world.connection_of("u1", "loc-1")
    assert connection.state == common_pb2.CONNECTION_STATE_CONNECTED and connection.mailbox_email == ALICE
    assert connection.start_history_id > 0


async def test_unticking_send_in_the_browser_shows_which_permission_is_missing(
    auth_world: AuthWorld, headless_chromium: HeadlessChromium
) -> None:
    auth_world.sandbox.create_mailbox(ALICE)
    await auth_world.add_user("u1")

    outcome, text = await consent_in_browser(
        auth_world, headless_chromium, "loc-1", untick="https://www.googleapis.com/auth/gmail.send"
    )

    assert outcome == "error"
    assert "you unticked: gmail.send - please connect again and allow every permission" in text
    listed = await auth_world.crm.ListConnections(auth_pb2.ListConnectionsRequest(location_id="loc-1"))
    assert list(listed.connections) == []
