"""The compare report: one self-contained HTML file whose charts render in a real browser."""

import re
import shutil
import subprocess

import pytest

from modelchip.cost import compare
from modelchip.report import compare_html

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def html():
    return compare_html.render(compare.run(compare.Setting()))


def test_report_is_self_contained(html):
    # nothing fetched from anywhere: no external scripts, styles, images or fonts
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', html)
    assert "@import" not in html
    assert html.count("<svg") == 4  # KV bytes, cost at 8K, cost at 32K, roofline


def test_report_holds_the_tables(html):
    for text in ("Cost at 8K context", "Cost at 32K context", "Roofline", "step3", "ascend-910b", "ridge"):
        assert text in html


def _browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


@pytest.mark.slow  # starts a browser
def test_charts_render_in_headless_chromium(html, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian package 'chromium'; .ci/run installs it): "
                    "the rendering check needs a real browser")
    page = tmp_path / "report.html"
    page.write_text(html)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=1800).stdout  # hang guard
    # the page's own script counts charts whose marks got a non-zero size from layout
    assert 'data-charts-rendered="4"' in dom, dom[-500:]
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=1800)  # hang guard
    assert shot.exists() and shot.stat().st_size > 20_000  # a blank page compresses to a few KB
