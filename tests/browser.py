"""Headless-chromium check of a rendered report, shared by the report tests (audit, anomaly, segmentation).

``render_and_probe(html_path, expected_images)`` copies the page with a small script appended (the report
itself stays script-free), loads it in headless chromium, and asserts that every ``<img>`` decoded
(``complete`` and ``naturalWidth > 0``) and that there are exactly ``expected_images`` of them; it also takes
a screenshot of the real page.  Without chromium the test is skipped, or fails when ``CI`` is set.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-ok', ok + '/' + imgs.length);
  var h = document.getElementById('headline');
  var first = document.querySelector('section[id^="sec-"]');
  if (h && first) {
    var r = h.getBoundingClientRect(), s = getComputedStyle(h);
    var visible = r.height > 40 && r.width > 300 && s.display !== 'none' && s.visibility !== 'hidden'
                  && parseFloat(s.opacity) > 0.9 && r.top < window.innerHeight;
    document.body.setAttribute('data-headline', (visible ? 'visible' : 'hidden') + ':' +
                               (r.bottom <= first.getBoundingClientRect().top ? 'above' : 'below'));
  }
});
</script>"""


@dataclass
class Probe:
    """What chromium saw: the dumped DOM, images decoded / present, the headline probe, the screenshot."""

    dom: str
    images_ok: int
    images_total: int
    headline: str | None
    screenshot: Path


def chromium() -> str:
    """Path of a chromium executable; skips the test when there is none (fails when ``CI`` is set)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    if os.environ.get("CI"):
        pytest.fail("CI is set but chromium is not installed (apt-get install chromium)")
    pytest.skip("chromium not installed: apt-get install chromium to run the browser test")


def render_and_probe(html_path: str | Path, expected_images: int | None) -> Probe:
    """Render ``html_path`` in headless chromium; assert every image decodes and, unless ``expected_images``
    is None, that the page has exactly that many; returns the :class:`Probe`."""
    exe, path = chromium(), Path(html_path)
    probe = path.with_name(path.stem + "_probe.html")
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
        dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        m = re.search(r'data-images-ok="(\d+)/(\d+)"', dom.stdout)
        assert m, f"image probe did not run; stderr: {dom.stderr[-2000:]}"
        ok, total = int(m.group(1)), int(m.group(2))
        assert ok == total, f"{total - ok} of {total} images did not decode in {path.name}"
        if expected_images is not None:
            assert total == expected_images, f"{path.name}: {total} images, expected {expected_images}"
        shot = path.with_name(path.stem + "_screenshot.png")
        subprocess.run(flags + ["--window-size=1200,2400", f"--screenshot={shot}", path.as_uri()],
                       capture_output=True, timeout=120)
        assert shot.exists() and shot.stat().st_size > 10_000, f"no screenshot of {path.name}"
    head = re.search(r'data-headline="([^"]*)"', dom.stdout)
    probe.unlink()
    return Probe(dom.stdout, ok, total, head.group(1) if head else None, shot)
