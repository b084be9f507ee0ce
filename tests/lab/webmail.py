"""Roundcube driven in Debian's headless Chromium, the way a person uses it (page object).

Chromium comes from apt (/usr/bin/chromium), driven by playwright; playwright never
downloads a browser here.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
TIMEOUT_MS = 30_000
# where the browser tests leave their screenshots (Roundcube's and SOGo's)
ARTIFACTS = Path(os.environ.get("MAILFLEET_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "artifacts")) / "screenshots"


@contextmanager
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


class _Session:
    """One user's browser session. The lab host's certificate is from its own CA: HTTPS
    errors are ignored here (the tests check the certificate elsewhere)."""

    def __init__(self, chromium, url: str, shots: Path) -> None:
        self.context = chromium.new_context(ignore_https_errors=True,
                                            viewport={"width": 1280, "height": 800})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page: Page = self.context.new_page()
        self.url = url.rstrip("/") + "/"
        self.base = url.rstrip("/")
        self.shots = shots

    def close(self) -> None:
        self.context.close()

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


class Roundcube(_Session):
    """Roundcube, as a person uses it."""

    def login(self, user: str, password: str) -> bool:
        """True when the mailbox opens; False when Roundcube refuses the login."""
        page = self.page
        page.goto(self.url)
        page.fill("#rcmloginuser", user)
        page.fill("#rcmloginpwd", password)
        page.click("#rcmloginsubmit")
        page.wait_for_load_state("networkidle")
        if "_task=mail" in page.url:
            page.wait_for_selector("#messagelist", state="attached")
            return True
        return False

    def inbox_subjects(self) -> list[str]:
        page = self.page
        page.goto(self.url + "?_task=mail&_mbox=INBOX")
        page.wait_for_selector("#messagelist", state="attached")
        page.wait_for_load_state("networkidle")
        return [s.strip() for s in page.locator("#messagelist span.subject a").all_inner_texts()]

    def send(self, to: str, subject: str, body: str) -> None:
        page = self.page
        page.goto(self.url + "?_task=mail&_action=compose")
        page.wait_for_selector("#compose-subject")
        page.locator("#compose_to input[type=text]").fill(to)
        page.fill("#compose-subject", subject)
        page.fill("#composebody", body)
        page.click("button.send")
        # once sent, Roundcube leaves the compose screen for the mail list (its short-lived
        # "Message sent successfully" notice is too brief to wait for reliably)
        page.wait_for_url(lambda url: "_action=compose" not in url)
        page.wait_for_load_state("networkidle")

    def add_filter(self, name: str, sender: str, folder: str) -> None:
        """Settings → Filters → Create: mail from `sender` goes to `folder`."""
        page = self.page
        page.goto(self.url + "?_task=settings&_action=plugin.managesieve")
        page.wait_for_load_state("networkidle")
        page.click("a.create")
        form = page.frame_locator("#filter-box")
        form.locator("#_name").fill(name)
        form.locator("#header0").select_option("from")
        form.locator("#rule_op0").select_option("contains")
        form.locator("input[name='_rule_target[0][]']").fill(sender)
        form.locator("#action_type0").select_option("fileinto")
        form.locator("#action_mailbox0").select_option(folder)
        form.locator("button.submit").click()
        page.locator("#filterslist").get_by_text(name, exact=True).wait_for()
        page.wait_for_load_state("networkidle")

    def change_password(self, current: str, new: str) -> None:
        page = self.page
        page.goto(self.url + "?_task=settings&_action=plugin.password")
        page.fill("#curpasswd", current)
        page.fill("#newpasswd", new)
        page.fill("#confpasswd", new)
        page.click("button.submit")
        page.wait_for_selector("text=Successfully saved")


class SOGo(_Session):
    """SOGo (its Angular pages load in steps: wait for elements, not for the page's load
    event)."""

    def login(self, user: str, password: str) -> bool:
        """True when the mail view opens; False when SOGo refuses the login."""
        page = self.page
        page.goto(self.base + "/")  # nginx sends / on to /SOGo/
        page.fill('input[ng-model="app.creds.username"]', user)
        page.fill('input[ng-model="app.creds.password"]', password)
        with page.expect_response("**/SOGo/connect") as answer:
            page.click('button[type="submit"]')
        if answer.value.status != 200:
            return False
        page.wait_for_url("**/Mail/view**")
        return True

    def wait_for_message(self, subject: str) -> None:
        """The inbox lists a message with this subject."""
        self.page.get_by_text(subject, exact=True).first.wait_for(state="visible")

    def change_password(self, user: str, current: str, new: str) -> int:
        """SOGo's own password change request, as its Preferences page sends it (with the
        session's XSRF token); the HTTP status."""
        token = next(c["value"] for c in self.context.cookies() if c["name"] == "XSRF-TOKEN")
        answer = self.context.request.post(
            self.base + "/SOGo/so/changePassword", headers={"X-XSRF-TOKEN": token},
            data={"userName": user, "newPassword": new, "oldPassword": current})
        return answer.status
