"""The live camera measured: python -m bench.live [--seconds S] (needs Debian's chromium and wrk).

One run, one server: the frames a visitor's live stream gets classified per second (Chromium's fake camera playing
a photo), and /service's throughput under wrk (c16) with no stream, then with that stream running beside it."""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image, ImageOps

from bench import wrk
from bench.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
JPEGS = sorted((ROOT / "examples").glob("*.jp*g"))
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def fake_camera(photo: Path, path: Path, size: tuple[int, int] = (320, 240), frames: int = 10) -> Path:
    """The photo as a Y4M video (what Chromium's --use-file-for-fake-video-capture plays, in a loop): 4:2:0."""
    image = ImageOps.fit(Image.open(photo).convert("RGB"), size)
    y, cb, cr = image.convert("YCbCr").split()
    half = (size[0] // 2, size[1] // 2)
    frame = b"FRAME\n" + y.tobytes() + cb.resize(half).tobytes() + cr.resize(half).tobytes()
    path.write_bytes(f"YUV4MPEG2 W{size[0]} H{size[1]} F10:1 Ip A1:1 C420jpeg\n".encode() + frame * frames)
    return path


@contextlib.contextmanager
def camera_browser(video: Path):
    """A Chromium browser context whose camera shows `video`, the permission granted."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            *BROWSER_FLAGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={video}"])
        try:
            yield browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["camera"])
        finally:
            browser.close()


def start_camera(page, element: str) -> None:
    """The webcam component's own buttons, as a visitor presses them: the camera, then its record button."""
    block = page.locator(element)
    record = block.locator("button", has_text=re.compile("^\\s*Record\\s*$"))
    access = block.get_by_text(re.compile("access webcam", re.I))
    access.or_(record).first.wait_for(timeout=30_000)  # the one the component shows first
    if access.count():
        access.first.click()
    record.first.click(timeout=30_000)


def live_frames(url: str) -> dict[str, float]:
    """/metrics' count of the live camera's frames, by outcome."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {outcome: float(value) for outcome, value in
            re.findall(r'classifier_live_frames_total\{outcome="(\w+)"\} ([\d.e+]+)', text)}


def classified_per_second(url: str, seconds: float) -> float:
    before, started = live_frames(url), time.monotonic()
    time.sleep(seconds)
    return (live_frames(url).get("classified", 0) - before.get("classified", 0)) / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="per measurement (default 20)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "live.json")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists() or not wrk.available():
        print("error: needs Debian's chromium and wrk (apt-get install chromium wrk)", file=sys.stderr)
        return 2
    server = ServerProcess()
    try:
        alone = wrk.drive(server.url, JPEGS, 16, args.seconds)
        with tempfile.TemporaryDirectory() as folder, \
                camera_browser(fake_camera(ROOT / "examples" / "cat.jpeg", Path(folder) / "cat.y4m")) as context:
            page = context.new_page()
            page.goto(server.url + "/")
            page.get_by_text("Live camera").click()
            start_camera(page, "#live-camera")
            page.wait_for_selector('#live-labels h2[data-testid="label-output-value"]', timeout=60_000)
            stream_alone = classified_per_second(server.url, args.seconds)
            before = live_frames(server.url)
            beside = wrk.drive(server.url, JPEGS, 16, args.seconds)
            after = live_frames(server.url)
    finally:
        server.stop()
    under_load = {outcome: after.get(outcome, 0) - before.get(outcome, 0) for outcome in ("classified", "dropped")}
    report = {"seconds": args.seconds, "stream_frames_per_s": round(stream_alone, 2),
              "stream_frames_per_s_beside_c16": round(under_load["classified"] / args.seconds, 2),
              "stream_frames_dropped_beside_c16": under_load["dropped"],
              "service_c16_img_s_alone": alone["img_s"], "service_c16_img_s_beside_stream": beside["img_s"],
              "service_non_2xx": alone["non_2xx"] + beside["non_2xx"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| measured | alone | beside the other |\n|---|---|---|")
    print(f"| live stream, frames classified per second | {report['stream_frames_per_s']} | "
          f"{report['stream_frames_per_s_beside_c16']} (beside /service c16; {under_load['dropped']:.0f} dropped) |")
    print(f"| /service c16, img/s | {alone['img_s']} | {beside['img_s']} (beside the stream) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
