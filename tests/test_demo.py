"""Tests of demo.py, the live browser demo: the page and its stream over a real server, driven by a real
headless Chromium through the Chrome DevTools protocol (the same `websockets` library the server uses).

One demo server (a subprocess, as a user starts it) serves every test of this file. Its RPFM checkpoint
is the session's tiny one trained 30 steps on (its 2 steps leave the zero-initialised pose encoder
silent, and the drag test needs the pose to matter); FPDM stays at 2 steps, for switching methods.
Without a browser (.ci/run installs Debian's chromium) the browser tests skip and say why; the
protocol tests (bad input, disconnects, two clients) always run.

    python -m pytest -q tests/test_demo.py

Run as a script it measures instead of testing (frames per second in the browser for every method on
the page, and the README's screenshot):

    python tests/test_demo.py --ckpt runs/tiny/reflow.pt,runs/tiny/rpfm.pt,runs/tiny/fpdm.pt --screenshot assets/demo.png
"""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--remote-debugging-port=0", "--window-size=1000,800", "--disable-renderer-backgrounding",
                "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows"]
R_ELBOW, R_WRIST = 3, 4


# ----------------------------------------------------------------------------------------------
# A demo server in a subprocess, and a headless Chromium driven through the DevTools protocol
# ----------------------------------------------------------------------------------------------

class DemoServer:
    """`python demo.py ... --port 0` as a user runs it; its printed lines are kept in `lines`."""

    def __init__(self, args: list, timeout: float = 180):
        self.proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "demo.py"), "--port", "0", *args],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines, self.url = [], None
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + timeout
        while self.url is None:
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("demo.py did not start:\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.1)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            found = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
            if found:
                self.url = found.group(1)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "ws"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class Chromium:
    """A headless Chromium and its DevTools websocket: call(method, **params) -> result."""

    def __init__(self, exe: str):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="chromium-")  # a fresh profile every time
        self.proc = subprocess.Popen([exe, *CHROME_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = Path(self.profile) / "DevToolsActivePort", time.time() + 60
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{exe} did not open its DevTools port")
            time.sleep(0.1)
        port, path = port_file.read_text().split()
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30, legacy=True)
        self.next_id = 0

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        self.ws.send(json.dumps({**msg, "sessionId": session} if session else msg))
        deadline = time.time() + timeout
        while True:  # events of every page arrive here too: skip them
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.time())))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> "Page":
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        page = Page(self, session, target)
        page.call("Emulation.setFocusEmulationEnabled", enabled=True)  # every tab behaves as the focused one
        page.call("Page.navigate", url=url)
        page.wait("window.demo && demo.frames >= 1", "the first frame")
        return page

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            self.proc.wait(10)
            shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    def __init__(self, browser: Chromium, session: str, target: str):
        self.browser, self.session, self.target = browser, session, target

    def call(self, method: str, **params) -> dict:
        return self.browser.call(method, self.session, **params)

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 30):
        deadline = time.time() + timeout
        while not self.js(expression):
            if time.time() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what} ({expression})")
            time.sleep(0.05)

    def page_xy(self, frame_xy) -> tuple:
        """A point of the keypoint frame (the page's demo.cfg.frame, 256x176 for DeepFashion) -> page
        pixels on the pose canvas."""
        r = self.js("(r => [r.left, r.top, r.width, r.height])(document.getElementById('pose').getBoundingClientRect())")
        h, w = self.js("demo.cfg.frame")
        return r[0] + frame_xy[0] * r[2] / w, r[1] + frame_xy[1] * r[3] / h

    def drag(self, joint: int, to_frame_xy, steps: int = 6):
        """Press on the joint, move in `steps`, release: the mouse events a person makes."""
        start = self.page_xy(self.js(f"demo.kp[{joint}]"))
        end = self.page_xy(to_frame_xy)
        mouse = lambda kind, x, y, buttons: self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y,
                                                      button="left", buttons=buttons, clickCount=1)
        mouse("mousePressed", *start, 1)
        for k in range(1, steps + 1):
            mouse("mouseMoved", start[0] + (end[0] - start[0]) * k / steps, start[1] + (end[1] - start[1]) * k / steps, 1)
        mouse("mouseReleased", *end, 0)

    def set_file(self, selector: str, path: Path):
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(path)])

    def screenshot(self, path: Path):
        Path(path).write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self):
        self.browser.call("Target.closeTarget", targetId=self.target)


def decode(data_url: str) -> np.ndarray:
    """A frame's PNG data URL -> (H, W, 3) float pixels."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"), np.float32)


# ----------------------------------------------------------------------------------------------
# Fixtures: a checkpoint whose pose matters, one server, one browser
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_ckpts(ckpts, tiny_root, tmp_path_factory) -> Path:
    """The session's tiny checkpoints with RPFM trained on to 30 steps (about 5 s on 2 cores)."""
    import train
    from conftest import TRAIN_FAST

    out = tmp_path_factory.mktemp("demo_ckpts")
    for name in ("vae.pt", "fusion.pt", "fpdm.pt", "rpfm.pt"):
        if (ckpts / name).is_file():
            shutil.copy(ckpts / name, out / name)
    args = [a if prev != "--steps" else "30" for prev, a in zip([""] + TRAIN_FAST, TRAIN_FAST)]
    train.run(train.parse_config(["--method", "rpfm", "--data", str(tiny_root), "--out", str(out), *args]))
    return out


@pytest.fixture(scope="module")
def server(demo_ckpts):
    s = DemoServer(["--ckpt", f"{demo_ckpts / 'rpfm.pt'},{demo_ckpts / 'fpdm.pt'}", "--threads", "1",
                    "--sources", "8", "--log-seconds", "0.5", "--max-upload-mb", "1"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine: .ci/run installs Debian's chromium and chromium-driver "
                    "with apt-get, and that was not possible here (no root or no network)")
    b = Chromium(exe)
    yield b
    b.close()


class Client:
    """A plain WebSocket client of the demo: what a page sends, without the page."""

    def __init__(self, server: DemoServer):
        from websockets.sync.client import connect

        self.ws = connect(server.ws_url, max_size=None, open_timeout=30, legacy=True)
        self.hello = self.expect("hello")

    def send(self, msg):
        self.ws.send(msg if isinstance(msg, str) else json.dumps(msg))

    def expect(self, kind: str, timeout: float = 60) -> dict:
        deadline = time.time() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.time())))
            if msg["type"] == kind:
                return msg
            assert msg["type"] != "error", f"unexpected error: {msg['message']}"

    def pose(self, seq: int, kp) -> None:
        self.send({"type": "pose", "seq": seq, "keypoints": kp})


# ----------------------------------------------------------------------------------------------
# Without a browser: the page, bad input, disconnects, two clients
# ----------------------------------------------------------------------------------------------

def test_serves_one_self_contained_page_on_localhost(server):
    assert server.url.startswith("http://127.0.0.1:")
    html = urllib.request.urlopen(server.url, timeout=10).read().decode()
    assert "<canvas" in html and "new WebSocket" in html
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html)  # nothing fetched from elsewhere
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(server.url + "nothing", timeout=10)
    assert info.value.code == 404
    assert html == (ROOT / "demo.html").read_text(encoding="utf-8")  # the page is the file beside demo.py


def test_a_missing_page_is_one_line_naming_it(monkeypatch, tmp_path):
    import demo  # here, not at the top: the other tests run demo.py as a user does, in a subprocess
    monkeypatch.setattr(demo, "PAGE", tmp_path / "demo.html")
    with pytest.raises(FileNotFoundError, match=r"demo\.html: the demo's page is missing"):
        demo.read_page()


def test_bad_input_is_a_message_and_the_server_goes_on(server):
    c = Client(server)
    kp = c.hello["sources"][0]["pose"]
    bad = [("not json", "not valid JSON"),
           ({"type": "dance"}, "expected pose, settings, source or sequence"),
           ({"type": "pose", "keypoints": kp[:17]}, "expected 18 joints"),
           ('{"type": "pose", "keypoints": [[NaN, 1]' + ", null" * 17 + "]}", "finite numbers"),
           ({"type": "pose", "keypoints": [None] * 18}, "every joint is missing"),
           ({"type": "settings", "mode": "fpdm-ddim", "steps": 0}, "steps 0: expected a whole number from 1"),
           ({"type": "settings", "mode": "reflow"}, "method 'reflow': this server has rpfm"),
           ({"type": "source", "test": 99}, "source 99"),
           ({"type": "source", "upload": "data:image/png;base64," + base64.b64encode(b"junk").decode(),
             "name": "photo.png"}, "upload 'photo.png': not an image"),
           ({"type": "sequence", "csv": "1,2,3\n", "name": "short.csv"}, "short.csv' row 1: expected 36 numbers"),
           ({"type": "sequence", "csv": ",".join(["nan"] * 36), "name": "nan.csv"}, "row 1: no joint inside"),
           ({"type": "sequence", "csv": ",".join(["5000"] * 36), "name": "far.csv"}, "row 1: no joint inside")]
    for msg, expected in bad:
        c.send(msg)
        got = c.expect("error")["message"]
        assert expected in got, (msg, got)
    outside = [list(p) if p else None for p in kp]
    outside[0] = [-80.0, 900.0]  # dragged past the frame's corner: clamped, drawn
    c.pose(1, outside)
    frame = c.expect("frame")
    assert frame["seq"] == 1 and frame["image"].startswith("data:image/png;base64,")
    c.send({"type": "sequence", "csv": "# fps=25\n" + ",".join(["10", "20"] * 18), "name": "ok.csv"})
    seq = c.expect("sequence")
    assert seq["fps"] == 25 and len(seq["frames"]) == 1


def test_disconnects_mid_stream_and_two_clients_at_once(server):
    a = Client(server)
    kp = a.hello["sources"][0]["pose"]
    for seq in range(1, 30):
        a.pose(seq, kp)
    a.ws.close()  # gone mid-stream, with poses still pending
    b, c = Client(server), Client(server)
    b.send({"type": "settings", "mode": "fpdm-ddim", "steps": 2})
    b.expect("ready")
    for seq in range(1, 4):
        b.pose(seq, kp)
        c.pose(seq, kp)
    fb, fc = b.expect("frame"), c.expect("frame")
    while fb["seq"] < 3:
        fb = b.expect("frame")
    while fc["seq"] < 3:
        fc = c.expect("frame")
    assert fb["label"] == "fpdm ddim 2" and fc["label"].startswith("rpfm euler")
    assert server.proc.poll() is None
    assert any("closed" in line for line in server.lines)


def test_one_noise_per_session_same_pose_same_frame(server):
    c = Client(server)
    kp = c.hello["sources"][1]["pose"]
    c.send({"type": "source", "test": 1})
    c.expect("ready")
    frames = []
    for seq in (1, 2):
        c.pose(seq, kp)
        frames.append(c.expect("frame"))
    assert frames[0]["image"] == frames[1]["image"]  # the person does not change between frames
    assert {"pose", "network", "decode", "encode", "wait"} <= set(frames[0]["ms"])


def test_a_signer_checkpoint_serves_hands_and_its_test_sentence(sign_ckpt, sign_root):
    import data
    import poses

    s = DemoServer(["--ckpt", str(sign_ckpt), "--threads", "1", "--sources", "4"])
    try:
        c = Client(s)
        hello, test = c.hello, data.PairDataset(sign_root, "test", 32, verbose=False)
        (video, frames), = test.videos.items()
        assert hello["frame"] == list(test.frame) and len(hello["limbs"]) == len(poses.SIGN50.bones)
        assert hello["builtin"]["fps"] == 25 and len(hello["builtin"]["frames"]) == len(frames)
        assert video in hello["builtin"]["name"]
        assert sorted(hello["hands"]) == ["4", "7"] and hello["hands"]["4"] == list(range(29, 50))  # wrist -> hand
        kp = hello["sources"][0]["pose"]
        assert len(kp) == 50
        c.pose(1, kp)
        assert c.expect("frame")["seq"] == 1
        c.send({"type": "sequence", "name": "coco.csv", "csv": ",".join(["20"] * 36) + "\n"})
        error = c.expect("error")
        assert "50 joints" in error["message"] and "coco.csv" in error["message"]
        c.pose(2, kp[:18])  # a COCO-sized pose for a signer model: a message, and the server goes on
        assert "expected 50 joints" in c.expect("error")["message"]
        assert s.proc.poll() is None
    finally:
        s.stop()


# ----------------------------------------------------------------------------------------------
# In headless Chromium: drag a joint, play a sequence, bad files, a reload, two tabs
# ----------------------------------------------------------------------------------------------

def limb_box(points, size: int, margin: int = 3) -> tuple:
    """Pixel box (x0, y0, x1, y1) in the size x size generated image around 256x176-frame points."""
    xy = np.asarray(points, np.float32) * np.array([size / 176, size / 256])
    x0, y0 = np.floor(xy.min(0)).astype(int) - margin
    x1, y1 = np.ceil(xy.max(0)).astype(int) + margin + 1
    return max(0, x0), max(0, y0), x1, y1


def test_drag_a_joint_and_the_person_follows(browser, server):
    page = browser.open(server.url)
    try:
        # a source whose target pose has the right arm (elbow and wrist), to drag its wrist
        i = page.js("demo.cfg.sources.findIndex(s => s.pose[3] && s.pose[4])")
        page.js(f"document.getElementById('test').value = '{i}'; document.getElementById('test').onchange()")
        page.wait("demo.lastSeq >= demo.seq && document.getElementById('message').textContent.includes('source')",
                  "the frame of the new source")
        before, elbow, wrist = page.js("[demo.lastImage, demo.kp[3], demo.kp[4]]")
        target = [min(170.0, wrist[0] + 60), max(5.0, wrist[1] - 40)]
        page.drag(R_WRIST, target)
        page.wait("demo.lastSeq >= demo.seq", "the frame of the dragged pose")
        after, moved = page.js("[demo.lastImage, demo.kp[4]]")
        assert moved == pytest.approx(target, abs=2)
        a, b = decode(before), decode(after)
        change = np.abs(a - b).mean(2)  # (H, W)
        x0, y0, x1, y1 = limb_box([elbow, wrist, target], a.shape[1])
        inside = np.zeros_like(change, bool)
        inside[y0:y1, x0:x1] = True
        assert change.max() > 0  # a new frame, not the old one again
        assert change[inside].mean() > 1.5 * change[~inside].mean()  # it changed where the arm moved
        fps = page.js("document.getElementById('fps').textContent")
        assert re.fullmatch(r"\d+\.\d", fps), fps
        # dragged far outside the canvas: the joint stays on the frame's edge and is drawn
        page.drag(R_WRIST, [400, -300])
        page.wait("demo.lastSeq >= demo.seq", "the frame of the clamped pose")
        assert page.js("demo.kp[4]") == [175, 0]
        assert page.js("demo.errors.length") == 0
    finally:
        page.close()


def test_play_a_sequence_bad_files_a_reload_and_two_tabs(browser, server, tmp_path):
    page = browser.open(server.url)
    other = browser.open(server.url)  # a second tab, open the whole time
    try:
        n = page.js("demo.cfg.builtin.frames.length")
        page.js("document.getElementById('builtin').click()")
        other.drag(R_WRIST if other.js("demo.kp[4]") else 1, [88, 60])  # the other tab works meanwhile
        page.wait("demo.played", "the end of the built-in sequence", timeout=60)
        played = page.js("demo.played")
        assert played["n"] == n and 1 <= played["shown"] <= n
        text = page.js("document.getElementById('sequence').textContent")
        assert f"{played['shown']} frames shown, {n - played['shown']} dropped" in text
        other.wait("demo.lastSeq >= demo.seq", "the other tab's frame")
        bad = tmp_path / "moves.csv"
        bad.write_text("# fps=12\n" + ",".join(["50"] * 36) + "\n" + ",".join(["50"] * 35) + "\n")
        page.set_file("#csv", bad)
        page.wait("document.getElementById('message').textContent.includes('row 3')", "the CSV row's message")
        assert "moves.csv" in page.js("document.getElementById('message').textContent")
        junk = tmp_path / "photo.png"
        junk.write_bytes(b"not a png")
        page.set_file("#upload", junk)
        page.wait("document.getElementById('message').textContent.includes('not an image')", "the upload's message")
        page.js("document.getElementById('builtin').click()")  # a reload mid-stream ...
        page.call("Page.reload")
        page.wait("window.demo && demo.frames >= 1", "a frame after the reload")  # ... and the page works again
        other.drag(1, [100, 70])
        other.wait("demo.lastSeq >= demo.seq", "the other tab's frame after the reload")
        assert server.proc.poll() is None
    finally:
        page.close()
        other.close()


# ----------------------------------------------------------------------------------------------
# As a script: frames per second in the browser for each method, and the README's screenshot
# ----------------------------------------------------------------------------------------------

def measure(page: Page, server: DemoServer, mode: str, steps: int, frames: int) -> dict:
    """The page's speed test (two poses in flight, so the server never waits for the page) at one
    setting, beside the server's own frames-per-second lines logged meanwhile."""
    page.js(f"document.getElementById('mode').value = '{mode}'; document.getElementById('mode').onchange();"
            f"document.getElementById('steps').value = {steps}; document.getElementById('steps').onchange()")
    page.wait("demo.lastSeq >= demo.seq && document.getElementById('label').textContent.endsWith("
              + f"' {steps}')", f"{mode} {steps}", timeout=120)
    time.sleep(1.5)  # a log interval with no frame: the server's next line is the speed test's alone
    first_line = len(server.lines)
    page.js(f"speedTest({frames})")
    page.wait("demo.speedResult", f"the speed test of {mode} {steps}", timeout=600)
    result = page.js("demo.speedResult")
    time.sleep(1.2)
    logged = [float(m.group(1)) for line in server.lines[first_line:]
              if (m := re.search(r"\| ([\d.]+) frames/s \|", line)) and result["label"] in line]
    return {"label": result["label"], "page_fps": result["fps"], "frames": result["frames"],
            "server_fps": float(np.median(logged)) if logged else None, "server_lines": logged}


def script(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="measure the live demo in headless Chromium")
    parser.add_argument("--ckpt", required=True, help="demo.py's --ckpt: comma-separated checkpoints")
    parser.add_argument("--screenshot", default="", help="write a screenshot of the page here")
    parser.add_argument("--frames", type=int, default=200, help="frames per speed test (FPDM: a tenth; 0: none)")
    parser.add_argument("--compile", action="store_true", help="demo.py --compile (on the CPU: minutes of warm-up)")
    args = parser.parse_args(argv)
    server = DemoServer(["--ckpt", args.ckpt, "--log-seconds", "1", *(["--compile"] if args.compile else [])],
                        timeout=900 if args.compile else 180)
    browser = Chromium(find_chromium())
    try:
        page = browser.open(server.url)
        modes = {m["id"]: m for m in page.js("demo.cfg.modes")}
        plan = [("reflow", 1), ("reflow", 2), ("rpfm", modes.get("rpfm", {}).get("steps")),
                ("fpdm-ddpm", modes.get("fpdm-ddpm", {}).get("steps"))]
        for mode, steps in plan:
            if mode in modes and args.frames > 0:
                n = args.frames // 10 if mode.startswith("fpdm") else args.frames
                print(json.dumps(measure(page, server, mode, steps, max(n, 10))), flush=True)
        if args.screenshot:
            first = list(modes)[0]
            page.js(f"document.getElementById('mode').value = '{first}'; document.getElementById('mode').onchange()")
            page.js("document.getElementById('test').value = '3'; document.getElementById('test').onchange()")
            page.wait("demo.lastSeq >= demo.seq", "the screenshot's frame")
            page.drag(R_WRIST if page.js("demo.kp[4]") else 1, [120, 90])
            page.wait("demo.lastSeq >= demo.seq", "the dragged frame")
            time.sleep(1.0)
            page.screenshot(Path(args.screenshot))
            Image.open(args.screenshot).crop((0, 0, 960, 500)).save(args.screenshot)  # the page, not the empty window
            print(f"wrote {args.screenshot}")
    finally:
        browser.close()
        server.stop()
        print("\n".join(line for line in server.lines if "frames/s" in line or "ms a frame" in line))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    script()
