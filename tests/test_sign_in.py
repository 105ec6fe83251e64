"""Sign-in in a real headless Chromium, in both of a university's modes: per-student accounts (cvae.classroom)
and single sign-on through a real OpenID Connect provider started here (oidc-provider-mock). A student cannot act
as another, forged cookies and headers fail, a reload and a shared link keep the sign-in, wrong passwords are
slowed, and the lecturer stops a student's real training run while the student cannot stop the lecturer's.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from pathlib import Path

import pytest

from cvae import classroom, jobs
from cvae.classroom import User
from cvae.runs import RunDir

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
# A run that trains for as long as the test needs it (stopped at the end), with epochs long enough not to
# fill the disk with checkpoints.
SLOW_RUN = {"arch": "mlp", "epochs": 100, "train_subset": 8192, "threads": 1, "latent_dim": 2}


def _runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    root.mkdir()
    return root


def _wait_state(run: RunDir, states: tuple[str, ...], timeout: float = 90) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = run.read_status().get("state")
        if state in states:
            return state
        time.sleep(0.3)
    pytest.fail(f"{run.id} never reached {states}: {run.read_status()}")


def _signed_in_as(page, name: str) -> None:
    page.get_by_text(f"Signed in as {name}").wait_for(timeout=60_000)


def _cookie(context, name: str, timeout: float = 30) -> str:
    """The browser's cookie of that name, once the page's script has set it: the script runs after the page
    draws, so on a busy machine "Signed in as" can show a moment before the cookie exists."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [c["value"] for c in context.cookies() if c["name"] == name]
        if found:
            return found[0]
        time.sleep(0.2)
    pytest.fail(f"the browser never got the {name} cookie")


def _sign_in_form(page) -> None:
    page.get_by_role("button", name="Sign in").wait_for(timeout=60_000)


def _sign_in(page, name: str, password: str) -> None:
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()


def _buttons(page) -> set[str]:
    """The labels of the Train page's buttons (without their icons' names), once the page has settled: on a busy
    machine its main part may still be drawing after the sidebar is."""
    page.get_by_text("Runs folder").wait_for(timeout=60_000)
    page.locator("main").get_by_role("button", name="Quick demo").wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    return set(page.evaluate(
        "() => [...document.querySelectorAll('main button')].map(b => { const c = b.cloneNode(true);"
        " c.querySelectorAll('[data-testid=stIconMaterial]').forEach(e => e.remove()); return c.innerText.trim(); })"
    ))  # fmt: skip


def _shot(page, name: str) -> None:
    """A 1280x720 screenshot into $CVAE_SHOTS_DIR, when it is set (to look at what a class sees)."""
    folder = os.environ.get("CVAE_SHOTS_DIR")
    if folder:
        page.wait_for_timeout(1000)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def _browser():
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    return pw, browser


def _context(browser, **kw):
    return browser.new_context(viewport={"width": 1280, "height": 720}, **kw)


def test_accounts_in_the_browser(tmp_path: Path, app_server, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _runs(tmp_path)
    monkeypatch.setenv("CVAE_RUNS_DIR", str(root))
    monkeypatch.setenv("CVAE_MAX_RUNS", "2")
    (tmp_path / "secrets.toml").write_text('[cvae]\nsign_in = "accounts"\n')
    classroom.add_accounts(root, ["prof"], role="lecturer")
    classroom.add_accounts(root, ["alice", "bob"])
    passwords = {"prof": "lecturer-pw", "alice": "alice-pw-1", "bob": "bob-pw-12"}
    for name, password in passwords.items():
        classroom.set_password(root, User(name, "lecturer" if name == "prof" else "student"), password)
    alices = jobs.start(root, SLOW_RUN, run_id="alices", user=User("alice"))
    profs = jobs.start(root, SLOW_RUN, run_id="profs", user=User("prof", "lecturer"))
    classroom.set_pinned(root, User("prof", "lecturer"), "profs", True)
    _wait_state(alices, ("running",))
    _wait_state(profs, ("running",))

    with app_server(tmp_path, ("--secrets.files", str(tmp_path / "secrets.toml"))) as url:
        pw, browser = _browser()
        try:
            bob = _context(browser)
            page = bob.new_page()
            page.goto(url)
            _sign_in_form(page)
            _shot(page, "sign_in")
            _sign_in(page, "alice", passwords["bob"])  # someone else's name with one's own password
            page.get_by_text("Wrong name or password").wait_for(timeout=30_000)
            _sign_in(page, "bob", passwords["bob"])
            _signed_in_as(page, "bob")
            token = _cookie(bob, "cvae_session")
            # bob sees the lecturer's pinned run but gets no Stop; alice's run is not shared with him
            page.goto(f"{url}/?run=profs")
            _signed_in_as(page, "bob")  # a reload keeps the sign-in
            page.get_by_text("Started by prof").wait_for(timeout=30_000)
            assert "Stop" not in _buttons(page)
            _shot(page, "sign_in_student")
            shared = bob.new_page()  # a shared link opened in a new tab
            shared.goto(f"{url}/?run=alices")
            _signed_in_as(shared, "bob")
            shared.get_by_text("No run called 'alices'").wait_for(timeout=30_000)
            page.close()

            # forged: bob's token altered to name prof, a made-up token, and identity headers; none signs in
            payload, signature = token.split(".")
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            forged = base64.urlsafe_b64encode(json.dumps({**claims, "u": "prof"}).encode()).rstrip(b"=").decode()
            for cookie in (f"{forged}.{signature}", f"{payload}.{secrets.token_urlsafe(32)}", "prof"):
                mallory = _context(browser, extra_http_headers={"X-Forwarded-User": "prof", "Remote-User": "prof"})
                mallory.add_cookies([{"name": "cvae_session", "value": cookie, "url": url}])
                page = mallory.new_page()
                page.goto(f"{url}/?run=profs")
                _sign_in_form(page)
                assert page.get_by_text("Signed in as").count() == 0
                mallory.close()

            # wrong passwords, repeated, are slowed: after three (bob's slip above was one), even the right one waits
            guesser = _context(browser).new_page()
            guesser.goto(url)
            _sign_in_form(guesser)
            for said in ("1 more try before a wait", "before the next try"):
                _sign_in(guesser, "alice", "guess")
                guesser.get_by_text(said).wait_for(timeout=30_000)
            _sign_in(guesser, "alice", passwords["alice"])
            guesser.get_by_text("Too many wrong passwords for alice").wait_for(timeout=30_000)
            _shot(guesser, "sign_in_wait")

            # the lecturer stops alice's run; bob's sign-out ends his session in every tab
            prof = _context(browser).new_page()
            prof.goto(f"{url}/?run=alices")
            _sign_in(prof, "prof", passwords["prof"])
            _signed_in_as(prof, "prof (lecturer)")
            prof.get_by_role("button", name="Class settings").click()
            prof.get_by_label("Runs each student may have queued or training").wait_for(timeout=30_000)
            _shot(prof, "sign_in_lecturer")
            prof.keyboard.press("Escape")
            prof.get_by_role("button", name="Stop").click()
            assert _wait_state(alices, ("stopped",)) == "stopped"
            assert profs.read_status()["state"] == "running"  # bob could not stop the lecturer's run
            shared.get_by_role("button", name="Sign out").click()
            _sign_in_form(shared)
            shared.reload()
            _sign_in_form(shared)
            assert classroom.user_of_token(root, token) is None
        finally:
            browser.close()
            pw.stop()


def test_single_sign_on_in_the_browser(tmp_path: Path, app_server, free_port, monkeypatch) -> None:
    from oidc_provider_mock import User as ProviderUser
    from oidc_provider_mock import run_server_in_thread

    root = _runs(tmp_path)
    monkeypatch.setenv("CVAE_RUNS_DIR", str(root))
    monkeypatch.setenv("CVAE_MAX_RUNS", "2")
    people = [ProviderUser(sub=sub, claims={"email": f"{sub}@uni.example", "email_verified": True})
              for sub in ("prof", "alice")]  # fmt: skip
    alices = jobs.start(root, SLOW_RUN, run_id="alices", user=User("alice@uni.example"))
    profs = jobs.start(root, SLOW_RUN, run_id="profs", user=User("prof@uni.example", "lecturer"))
    classroom.update_settings(root, None, classmates_visible=True)
    _wait_state(alices, ("running",))
    _wait_state(profs, ("running",))
    port = free_port()
    with run_server_in_thread(user_claims=people) as provider:
        (tmp_path / "secrets.toml").write_text(
            f'[auth]\nredirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
            f'cookie_secret = "{secrets.token_hex(32)}"\nclient_id = "cvae-lab"\nclient_secret = "not-checked"\n'
            f'server_metadata_url = "http://127.0.0.1:{provider.server_port}/.well-known/openid-configuration"\n'
            '[cvae]\nlecturers = ["prof@uni.example"]\n'
        )  # fmt: skip
        with app_server(tmp_path, ("--secrets.files", str(tmp_path / "secrets.toml")), port=port) as url:
            pw, browser = _browser()
            try:
                alice = _context(browser)
                page = alice.new_page()
                page.goto(f"{url}/?run=profs")
                page.get_by_role("button", name="Sign in").click()
                page.locator("input[name=sub]").fill("alice")  # the provider's own sign-in page
                page.get_by_role("button", name="Authorize").click()
                _signed_in_as(page, "alice@uni.example")
                page.goto(f"{url}/?run=profs")  # a reload, and a shared link in a new tab, keep the sign-in
                _signed_in_as(page, "alice@uni.example")
                page.get_by_text("Started by prof@uni.example").wait_for(timeout=30_000)
                assert "Stop" not in _buttons(page)
                shared = alice.new_page()
                shared.goto(f"{url}/?run=alices")
                _signed_in_as(shared, "alice@uni.example")
                shared.locator("main").get_by_role("button", name="Stop").wait_for(timeout=60_000)  # her own run
                assert "Stop" in _buttons(shared)

                # a made-up Streamlit identity cookie or header does not sign anyone in
                mallory = _context(browser, extra_http_headers={"X-Forwarded-Email": "prof@uni.example"})
                fake = base64.b64encode(json.dumps({"email": "prof@uni.example", "is_logged_in": True}).encode())
                mallory.add_cookies([{"name": "_streamlit_user", "value": fake.decode(), "url": url}])
                forged = mallory.new_page()
                forged.goto(f"{url}/?run=alices")
                forged.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
                assert forged.get_by_text("Signed in as").count() == 0

                prof = _context(browser).new_page()
                prof.goto(f"{url}/?run=alices")
                prof.get_by_role("button", name="Sign in").click()
                prof.locator("input[name=sub]").fill("prof")
                prof.get_by_role("button", name="Authorize").click()
                _signed_in_as(prof, "prof@uni.example (lecturer)")
                prof.goto(f"{url}/?run=alices")  # the provider sends people back to the app's front page
                _signed_in_as(prof, "prof@uni.example (lecturer)")
                prof.get_by_role("button", name="Stop").click()
                assert _wait_state(alices, ("stopped",)) == "stopped"
                assert profs.read_status()["state"] == "running"
            finally:
                browser.close()
                pw.stop()
