"""The HTML report in a real browser: headless Chromium (Debian's `chromium`, installed by .ci/run where absent).

Checks that the page loads with no console message (errors, uncaught exceptions, blocked resources), that every
plot image decodes with a non-zero size, that hovering a token shows its tooltip, and that following a link to a
closed rollout opens it. A test-only script is injected into a copy of the report; it writes what it saw into
the DOM, which `--dump-dom` returns. Screenshots go to test-artifacts/ (gitignored): report.png (the top of the
page) and report-tooltip.png (a token hovered). Skipped, saying why, only when no Chromium binary exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import pytest

from test_report import cli, make_runs

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


CHROMIUM = _chromium()
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary: install Debian's chromium (apt-get install -y chromium; .ci/run does) to run the "
           "report's browser test")]

PROBE = """<script>
(function () {
  var errors = [];
  window.addEventListener("error", function (e) { errors.push(String(e.message)); });
  window.addEventListener("load", function () {
    var out = {errors: errors, images: []};
    document.querySelectorAll("img").forEach(function (img) {
      out.images.push({alt: img.alt, complete: img.complete, w: img.naturalWidth, h: img.naturalHeight});
    });
    var tip = document.getElementById("tip");
    var tk = document.querySelector("details[open] .tokens .tk");
    out.tip_before = getComputedStyle(tip).display;
    if (!HASH) {  // screenshot mode: headless screenshots of a scrolled page come out blank, so bring the
      var d = tk.closest("details");  // rollout (and its teacher's colour legend) to the top instead of scrolling
      var main = document.querySelector("main");
      var h = document.getElementById(d.id.replace(/-r\d+$/, "").replace("-t", "-tok-"));
      main.insertBefore(d, main.firstChild);
      if (h) { var legend = h.nextElementSibling; main.insertBefore(legend, d); main.insertBefore(h, legend); }
    }
    var r = tk.getBoundingClientRect();
    tk.dispatchEvent(new MouseEvent("mouseover", {bubbles: true, clientX: r.left + 2, clientY: r.bottom - 2}));
    out.tip_after = getComputedStyle(tip).display;
    out.tip_text = tip.textContent;
    out.tip_rows = tip.querySelectorAll("tr").length;
    out.view = tk.getAttribute("data-view");
    out.index = +tk.getAttribute("data-i");
    var closed = document.querySelector("details.rollout:not([open])");
    out.closed_id = closed ? closed.id : null;
    function finish() {
      out.closed_open_after = closed ? closed.open : null;
      var pre = document.createElement("pre");
      pre.id = "test-results";
      pre.textContent = JSON.stringify(out);
      document.body.appendChild(pre);
    }
    if (HASH && closed) { location.hash = "#" + closed.id; setTimeout(finish, 200); } else { finish(); }
  });
})();
</script>"""


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_lines(stderr: str) -> list[str]:
    """Messages the page wrote to the console (Chromium logs them as INFO:CONSOLE lines)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]




@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_model) -> Path:
    root = tmp_path_factory.mktemp("browser")
    runs = make_runs(root, tiny_model)
    f = root / "report.html"
    run = cli("report", runs.compare, runs.verify, "--html", f)
    assert run.code == 0, run.err
    return f


def probed(report: Path, hash_nav: bool) -> Path:
    html = report.read_text(encoding="utf-8")
    probe = PROBE.replace("HASH", "true" if hash_nav else "false")
    f = report.with_name(f"probed-{int(hash_nav)}.html")
    f.write_text(html.replace("</head>", probe + "\n</head>", 1), encoding="utf-8")
    return f


def test_report_renders_in_chromium(report, tmp_path):
    # 1. the page as shipped: no console output at all, and a screenshot of its top
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    res = chromium(["--window-size=1400,2000", f"--screenshot={shot}", report.as_uri()], tmp_path / "p1")
    assert console_lines(res.stderr) == [], res.stderr[-3000:]
    assert shot.is_file() and shot.stat().st_size > 10_000, res.stderr[-3000:]

    # 2. the probe: images decoded, hover shows the tooltip, a link to a closed rollout opens it
    res = chromium(["--window-size=1400,1000", "--dump-dom", probed(report, hash_nav=True).as_uri()], tmp_path / "p2")
    assert console_lines(res.stderr) == [], res.stderr[-3000:]
    m = re.search(r'<pre id="test-results">(.*?)</pre>', res.stdout, re.S)
    assert m, res.stdout[-2000:] + res.stderr[-2000:]
    out = json.loads(unescape(m.group(1)))
    assert out["errors"] == []
    assert len(out["images"]) == 6
    for img in out["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
    assert out["tip_before"] == "none" and out["tip_after"] == "block"
    assert f"position {out['index']}" in out["tip_text"]
    assert "top-k KL" in out["tip_text"] and "overlap" in out["tip_text"]
    assert "student top" in out["tip_text"] and "teacher top" in out["tip_text"]
    assert out["tip_rows"] == 1 + 5  # header + the top-5 tokens of each model
    assert out["closed_id"] and out["closed_open_after"] is True

    # 3. a screenshot with a token hovered, for people to look at
    shot = ARTIFACTS / "report-tooltip.png"
    res = chromium(["--window-size=1400,1000", f"--screenshot={shot}", probed(report, hash_nav=False).as_uri()],
                   tmp_path / "p3")
    assert console_lines(res.stderr) == [], res.stderr[-3000:]
    assert shot.is_file()
