"""The page in a real browser: Debian's chromium driven by Playwright; drag and drop, file chooser, screenshots."""
from __future__ import annotations

import base64
from pathlib import Path

import pytest

from conftest import CAT_LABELS, COFFEE_LABELS, PHOTOS, ROOT, require_debian_package

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
DROP_ZONE = 'button[aria-label="Drop an image file here to upload"]'
TOP_LABEL = 'h2[data-testid="label-output-value"]'


@pytest.fixture(scope="module")
def page(server):
    require_debian_package(CHROMIUM, "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        yield page
        browser.close()


def open_page(page, server) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector(DROP_ZONE, timeout=60_000)


def classify_and_read(page) -> str:
    page.get_by_role("button", name="Submit").click()
    page.wait_for_selector(TOP_LABEL, timeout=60_000)
    return page.inner_text(TOP_LABEL).strip()


def test_drag_and_drop_a_photo_then_flag_it(page, server, flagging_dir):
    open_page(page, server)
    data = base64.b64encode((PHOTOS / "cat.jpeg").read_bytes()).decode()
    transfer = page.evaluate_handle("""([data, name]) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
        return transfer;
    }""", [data, "cat.jpeg"])
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event(DROP_ZONE, event, {"dataTransfer": transfer})
    page.wait_for_selector('[data-testid="image"] img', timeout=30_000)  # the dropped photo is shown
    assert classify_and_read(page) in CAT_LABELS
    top = page.inner_text(TOP_LABEL).strip()
    bar = page.locator(f'meter[aria-label="{top}"]')  # the probability bar of the top label, and its value
    assert 50 <= float(bar.get_attribute("value")) * 100 <= 100
    assert page.locator(f'[data-testid="{top}-confidence-set"]').inner_text().strip().endswith("%")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "drag-and-drop.png"), full_page=True)

    page.get_by_role("button", name="Flag").click()  # a misclassified photo is kept for retraining
    def flagged_text() -> str:
        return "".join(f.read_text() for f in flagging_dir.rglob("*.csv"))

    for _ in range(50):
        if top in flagged_text():
            break
        page.wait_for_timeout(200)
    assert top in flagged_text()
    from classifier.retrain import read_flagged  # the Train tab reads what the Flag button wrote

    [(photo, predicted)] = read_flagged(flagging_dir)
    assert predicted == top and photo.read_bytes() == (PHOTOS / "cat.jpeg").read_bytes()
    assert any(p.suffix in (".jpeg", ".jpg", ".png", ".webp") for p in flagging_dir.rglob("*"))


def test_upload_through_the_file_chooser(page, server):
    open_page(page, server)
    with page.expect_file_chooser() as chooser:
        page.click(DROP_ZONE)
    chooser.value.set_files(str(PHOTOS / "coffee.png"))
    page.wait_for_selector('[data-testid="image"] img', timeout=30_000)
    assert classify_and_read(page) in COFFEE_LABELS
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "file-chooser.png"), full_page=True)
