"""The chat page in a real headless browser (Debian's chromium driven by Playwright): type, see it stream.

Needs chromium (`make setup` installs Debian's chromium where it can; the fixture is in tests/conftest.py).
"""

from __future__ import annotations

import pytest

from tests.serve.conftest import ANSWER, API_KEY


@pytest.fixture(scope="module")
def browser(chromium):
    """One browser context for the module: the second test finds the key the first one entered."""
    context = chromium.new_context()
    yield context
    context.close()


def test_type_a_message_and_see_the_streamed_answer(browser, served):
    url, settings, _ = served
    page = browser.new_page()
    response = page.goto(f"{url}/")
    assert "raylm" in page.title()
    # the page is behind the key: it shows nothing of the server (prompt, tools) until the key is given
    assert page.is_visible("#key") and "API key" in page.inner_text("#model")   # 401: settings open
    assert page.input_value("#system") == ""
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    page.fill("#key", API_KEY)
    page.wait_for_selector("#model:has-text('search')")                # tools listed in the header
    assert page.input_value("#system").startswith("You are raylm")     # the default identity, editable
    # Count the updates of the answer bubble, to see the answer arrive in pieces (each delta appends text).
    page.evaluate("""() => {
        window.answerUpdates = 0;
        new MutationObserver((records) => {
            for (const r of records) if (r.target.classList?.contains('assistant')) window.answerUpdates++;
        }).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
    }""")
    page.fill("#input", "When did the Veltrane Bridge open?")
    page.press("#input", "Enter")
    # (locators, not wait_for_function: the page's CSP forbids the string evaluation that one uses)
    page.wait_for_selector(".msg.assistant", timeout=60_000)
    page.wait_for_selector("#status:text-is('ready')", timeout=60_000)
    assert page.inner_text(".msg.user") == "When did the Veltrane Bridge open?"
    tools = page.locator(".msg.tool").all_inner_texts()
    assert tools[0] == "🔧 search(Veltrane)" and "1873" in tools[1]   # the server-run tool, shown
    assert page.eval_on_selector(".msg.assistant", "e => e.textContent") == ANSWER
    # the answer's tokens are sent as they come (stream_interval_ms=0); vLLM may merge a few engine steps into
    # one delta when the replica is busy, but an answer that arrived whole would show one update
    assert page.evaluate("window.answerUpdates") >= 2
    page.close()


def test_page_shows_errors_from_the_server(browser, served):
    url, _, _ = served
    page = browser.new_page()
    page.goto(f"{url}/")
    page.click("#settings > summary")  # the key from the last test is remembered: settings start closed
    page.fill("#key", "wrong-key")
    page.fill("#input", "hello")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.error", timeout=30_000)
    assert "Incorrect API key" in page.inner_text(".msg.error")
    page.close()
