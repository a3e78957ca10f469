"""Drives ironboot's dashboard in a real browser (Debian's Chromium, headless,
through Playwright), as tests/loopback/dashboard.rs asks: sign in, filter the
fleet, watch a machine's boot appear live, start / watch / pause a rollout, and
check what a read token can and cannot do. Every request the pages make is
recorded; one to another origin fails the run.

Input (environment): IRONBOOT_URL, ADMIN_TOKEN, READ_TOKEN, BOOT_MAC (a machine
that has booted once), TO (the generation of `worker` to roll out),
SCREENSHOT (optional: where to save the fleet view). Prints one JSON line of
figures; exits non-zero with a message on the first failed check.
"""

import json
import os
import sys
import time
import urllib.request

from playwright.sync_api import expect, sync_playwright

URL = os.environ["IRONBOOT_URL"].rstrip("/")
ADMIN = os.environ["ADMIN_TOKEN"]
READER = os.environ["READ_TOKEN"]
MAC = os.environ["BOOT_MAC"]
TO = os.environ["TO"]
SCREENSHOT = os.environ.get("SCREENSHOT")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

figures = {}


def check(ok, what):
    if not ok:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def boot_script(mac):
    """One simulated network boot: the machine's iPXE script (what iPXE
    fetches after DHCP). Returns the script's text."""
    url = f"{URL}/boot/{mac.replace(':', '-')}.ipxe?buildarch=x86_64&platform=pcbios"
    with urllib.request.urlopen(url, timeout=10) as res:
        return res.read().decode()


def confirm(script):
    """The booted OS phones home with the token its script carried."""
    token = script.split("/config/")[1].split("/")[0]
    req = urllib.request.Request(f"{URL}/phone-home/{token}", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as res:
        check(res.status == 200, f"phone home answered {res.status}")


def sign_in(page, token):
    page.goto(f"{URL}/ui/")
    check(page.url.endswith("/ui/login"), f"signed out, / leads to the sign-in page ({page.url})")
    # Keyboard only: the token field takes focus by itself, Enter submits.
    # Chromium applies `autofocus` at its next rendering step, which can come
    # after the load event: wait for the focus instead of typing into nothing.
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(token)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    if not page.url.endswith("/ui/"):
        alert = page.get_by_role("alert")
        said = alert.inner_text() if alert.count() else "no message"
        check(False, f"sign-in stayed on {page.url}: {said}")
    expect(page.get_by_role("heading", name="Fleet", exact=True)).to_be_visible()


def watch_origin(context, seen):
    """Records every request; aborts (and remembers) any to another origin."""

    def route(r):
        seen.append(r.request.url)
        if r.request.url.startswith(URL + "/"):
            r.continue_()
        else:
            r.abort()

    context.route("**/*", route)


def admin_session(browser, seen):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watch_origin(context, seen)
    page = context.new_page()
    sign_in(page, ADMIN)
    cookies = context.cookies()
    check(
        any(c["name"] == "ironboot_ui" and c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies),
        f"the session cookie is HttpOnly and SameSite=Strict: {cookies}",
    )
    check(page.evaluate("document.cookie") == "", "the page's script cannot read the token")

    # The fleet: three machines, the census, filters.
    rows = page.locator("table.machines tbody tr")
    check(rows.count() == 3, f"three machines listed, not {rows.count()}")
    expect(page.get_by_text("3 machines running a generation")).to_be_visible()
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT, full_page=True)
    page.get_by_label("State", exact=True).select_option("confirmed")
    page.get_by_label("Group", exact=True).select_option("default")
    started = time.monotonic()
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/ui/?group=default**")
    figures["filter_ms"] = round((time.monotonic() - started) * 1000)
    check(rows.count() == 3, "the filter keeps the three confirmed machines")
    page.get_by_label("State", exact=True).select_option("booting")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No machine matches.")).to_be_visible()

    # A machine's page while it boots: the new boot appears within a second.
    page.goto(f"{URL}/ui/machines/{MAC}")
    boots = page.locator("#timeline article.boot")
    before = boots.count()
    page.wait_for_timeout(300)  # the event stream is open
    started = time.monotonic()
    boot_script(MAC)
    expect(boots).to_have_count(before + 1, timeout=1000)
    expect(page.locator("#timeline article.boot").first.locator("[data-step='boot.script']")).to_be_visible(timeout=1000)
    figures["boot_seen_ms"] = round((time.monotonic() - started) * 1000)
    check(figures["boot_seen_ms"] < 1000, f"the boot appeared after {figures['boot_seen_ms']} ms")

    # A rollout: started from the form, watched live, paused.
    page.goto(f"{URL}/ui/rollouts")
    page.get_by_label("Group", exact=True).select_option("default")
    page.get_by_label("Stream", exact=True).fill("worker")
    page.get_by_label("To generation", exact=True).fill(TO)
    page.get_by_label("Canary", exact=True).fill("1")
    page.get_by_label("Waves after the canary", exact=True).fill("100%")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/ui/rollouts/*")
    rollout_url = page.url
    expect(page.locator("#rollout-state")).to_have_text("running")
    canary = page.locator("table.wave").first.locator("tbody th a").first.inner_text()
    started = time.monotonic()
    confirm(boot_script(canary))
    expect(page.locator("table.wave").first.get_by_text("passed")).to_be_visible(timeout=2000)
    figures["gate_seen_ms"] = round((time.monotonic() - started) * 1000)
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#rollout-state")).to_have_text("paused")
    context.close()
    return rollout_url


def reader_session(browser, seen, rollout_url):
    context = browser.new_context()
    watch_origin(context, seen)
    page = context.new_page()
    sign_in(page, READER)
    page.goto(rollout_url)
    expect(page.locator("#rollout-state")).to_have_text("paused")
    check(page.get_by_role("button", name="Resume").count() == 0, "a reader sees no Resume")
    page.goto(f"{URL}/ui/groups/default")
    check(page.get_by_text("Move the pointer").count() == 0, "a reader sees no pointer form")
    # Forged posts with the reader's own cookie: without a form key, and with
    # the reader's own key (read from the sign-out form).
    key = page.locator("form.who input[name=form_key]").get_attribute("value")
    for form in ({}, {"form_key": key}):
        res = page.request.post(f"{rollout_url}/resume", form=form, max_redirects=0)
        check(res.status == 403, f"a reader's forged resume answered {res.status}")
    page.goto(rollout_url)
    expect(page.locator("#rollout-state")).to_have_text("paused")
    context.close()


def main():
    seen = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        rollout_url = admin_session(browser, seen)
        reader_session(browser, seen, rollout_url)
        browser.close()
    foreign = [u for u in seen if not u.startswith(URL + "/")]
    check(not foreign, f"requests left the server's origin: {foreign}")
    figures["requests"] = len(seen)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
