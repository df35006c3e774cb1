"""The live demo: drag a person's joints in a browser page and watch the generated person follow.

RPFM's reason to exist is real time. This script serves one local page (demo.html: plain HTML/JS, nothing
fetched from the internet) with the source photo, the target pose's skeleton whose joints you drag, and the
person generated in that pose, redrawn while you drag. The page chooses the method and step count
(RPFM's reflow student at 1-2 steps, RPFM Euler k, FPDM DDPM 20 and DDIM k), plays pose sequences at
their own frame rate (a CSV you give, or a built-in test sequence) and shows frames per second and the
milliseconds of a frame (network, decoding, transfer) as they happen.

How it stays live:
  - frames travel over one WebSocket (the `websockets` library serves the page and the socket on one
    port); the server keeps at most ONE pending pose per tab: a new pose supersedes a stale one, so a
    slow method drops frames instead of falling behind;
  - one generation thread does all the torch work (the CPU's cores belong to the network), so the
    server's event loop never blocks: two tabs, a reload or a disconnect mid-stream all keep working;
  - each tab is a stream (streaming.Live): its source encoded once and ONE noise for the session, so
    the person does not change between frames;
  - bad input (a malformed upload, pose or CSV row) is one message on the page naming it, never a crash.

Run:
  python demo.py                                   # every finished checkpoint in runs/tiny/, the newest chosen
  python demo.py --ckpt runs/tiny/reflow.pt,runs/tiny/rpfm.pt --port 8000
  python demo.py --device cuda --compile           # on a GPU (--compile: the warm-up compiles each method)
then open the printed address. Tests: python -m pytest -q tests/test_demo.py (headless Chromium).

Papers: RPFM (Jeong et al., arXiv 2505.03562), reflow (Liu et al., arXiv 2209.03003), FPDM (Lee et al.,
arXiv 2412.07333). Shape letters: H W image size (square, as trained), h w latent size.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import numpy as np
import torch
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

import cli
import data
import poses
import pipeline
import streaming
from cli import option  # one dataclass field = one --flag


@dataclass
class DemoConfig:
    ckpt: str = option("", "checkpoint(s), comma-separated; empty: every finished fpdm/rpfm/reflow.pt in "
                           "<runs>/<preset>/, the newest chosen first")
    runs: str = option("runs", "train.py's runs folder")
    preset: str = option("tiny", "the folder searched without --ckpt", choices=tuple(pipeline.MODEL_PRESETS))
    port: int = option(8765, "port on 127.0.0.1 (0: any free port; the address is printed)")
    ema: bool = option(True, "generate with the EMA weights")
    device: str = option("auto", "auto, cpu, cuda, mps ...")
    threads: int = option(1, "torch CPU threads; at batch 1 the tiny UNet's ops are too small to split, "
                             "and one thread leaves a core to the server and the browser")
    precision: str = option("auto", "auto: bf16 autocast on CUDA, float32 elsewhere", choices=pipeline.PRECISIONS)
    compile: bool = option(False, "torch.compile each UNet: on 2 CPU cores the 2-step student goes from 26 to 42 "
                                  "frames/s, after about 2 minutes of compiling per method at start-up")
    seed: int = option(0, "seed of every session's one noise")
    sources: int = option(24, "test-set sources offered on the page")
    max_upload_mb: float = option(4.0, "largest photo or CSV a page may send")
    log_seconds: float = option(2.0, "seconds between the server's frames-per-second lines")


# The page's method choices: (id, label, method, sampler, default steps, most steps). The student is
# trained for 1-2 steps; RPFM's default is its release (Euler 10); FPDM's DDPM 20 is its release.
MODES = (
    ("reflow", "RPFM reflow student, Euler", "reflow", "euler", 2, 2),
    ("rpfm", "RPFM, Euler", "rpfm", "euler", 0, 50),
    ("fpdm-ddpm", "FPDM, DDPM (release)", "fpdm", "ddpm", 0, 50),
    ("fpdm-ddim", "FPDM, DDIM", "fpdm", "ddim", 10, 50),
)
BUILTIN_FPS = 20.0  # the built-in test sequence: 4 test poses, 10 frames from each to the next
BUILTIN_POSES, BUILTIN_BETWEEN = 4, 10
SIGN_FPS = 25.0  # a signer benchmark's test sentence plays at its filmed rate


# ----------------------------------------------------------------------------------------------
# What the server holds: the models, the test sources, the built-in sequence
# ----------------------------------------------------------------------------------------------

def checkpoint_paths(cfg: DemoConfig) -> list:
    """--ckpt's files, or every finished checkpoint in <runs>/<preset>/ (the newest first)."""
    if cfg.ckpt:
        return [p.strip() for p in cfg.ckpt.split(",") if p.strip()]
    folder = Path(cfg.runs) / cfg.preset
    newest = pipeline.newest_checkpoint(folder)
    if newest is None:
        raise FileNotFoundError(f"no fpdm.pt, rpfm.pt or reflow.pt in {folder}/: run `python train.py "
                                f"--method rpfm` first, or pass --ckpt PATH")
    others = []
    for m in pipeline.LATENT_METHODS:
        p = folder / f"{m}.pt"
        if p.is_file() and p != newest and pipeline.is_finished(pipeline.load_checkpoint(p)):
            others.append(str(p))
    return [str(newest), *others]


def load_models(cfg: DemoConfig, device) -> dict:
    """method -> Generator, in --ckpt's order (the first is the page's first choice)."""
    gens = {}
    for path in checkpoint_paths(cfg):
        gen = pipeline.Generator.from_checkpoint(path, cfg.ema, device)
        if gen.method in gens:
            raise ValueError(f"--ckpt {path}: a second {gen.method} checkpoint (give one per method)")
        if cfg.compile:
            gen.unet.forward = torch.compile(gen.unet.forward)
        gens[gen.method] = gen
        print(f"demo.py: {gen.method} from {path} (step {gen.step})", flush=True)
    sizes = {g.image_size for g in gens.values()}
    if len(sizes) > 1:
        raise ValueError(f"--ckpt: the checkpoints draw different image sizes {sorted(sizes)}; give one preset")
    return gens


def modes_for(gens: dict) -> list:
    """The page's choices for the loaded methods, each with its steps (0: the process's release)."""
    out = []
    for mode_id, label, method, sampler, steps, most in MODES:
        if method in gens:
            default = pipeline.sampling_for(gens[method].process, steps, sampler).steps
            out.append({"id": mode_id, "label": label, "method": method, "sampler": sampler,
                        "steps": default, "max_steps": most})
    return out


def test_set(gens: dict) -> data.PairDataset:
    """The test split of the dataset the (first) checkpoint was trained on: its frame and layout are the page's."""
    gen = next(iter(gens.values()))
    return data.PairDataset(gen.dataset_root(), "test", gen.image_size, verbose=False)


def test_sources(dataset: data.PairDataset, count: int) -> list:
    """The first `count` distinct test sources: name, photo, its pair's target pose (the dataset's frame)."""
    seen, out = set(), []
    for i, (source, target) in enumerate(dataset.pairs):
        if source in seen:
            continue
        seen.add(source)
        photo = dataset.load_image(source).unsqueeze(0)  # (1, 3, H, W), as trained
        png = data_url(dataset.image_path(source).read_bytes(), "image/" + _kind(dataset.image_path(source)))
        out.append({"name": Path(source).name, "tensor": photo, "image": png, "keypoints": dataset.keypoints[source],
                    "pose": pose_json(dataset.keypoints[target])})
        if len(out) == count:
            break
    return out


def _kind(path: Path) -> str:
    return "png" if path.suffix.lower() == ".png" else "jpeg"


def builtin_sequence(sources: list, dataset: data.PairDataset) -> dict:
    """What 'play the test sequence' plays: a signer dataset's first test video as filmed (25 frames/s), or a
    smooth loop through the first test targets' poses."""
    if dataset.videos:
        video, names = next(iter(dataset.videos.items()))
        return {"name": f"the test sentence {video}", "fps": SIGN_FPS,
                "frames": [pose_json(dataset.keypoints[n]) for n in names]}
    keyframes = [keypoints_from_json(s["pose"], "built-in", dataset.frame) for s in sources[:BUILTIN_POSES]]
    frames = streaming.interpolate_poses(keyframes, BUILTIN_BETWEEN)
    return {"name": "the built-in test sequence", "fps": BUILTIN_FPS, "frames": [pose_json(f) for f in frames]}


# ----------------------------------------------------------------------------------------------
# Messages: poses as JSON (null for a missing joint), images as PNG data URLs
# ----------------------------------------------------------------------------------------------

def pose_json(kp) -> list:
    """(K, 2) (x, y), -1 missing -> [[x, y] or null] * K for the page."""
    kp = np.asarray(kp, np.float32).reshape(-1, 2)  # (K, 2)
    return [None if m else [round(float(x), 1), round(float(y), 1)] for (x, y), m in zip(kp, poses.is_missing(kp))]


def keypoints_from_json(joints, where: str, frame=data.FRAME, count: int = streaming.JOINTS) -> np.ndarray:
    """The page's `count` joints ([x, y] numbers or null) -> (count, 2), clamped into `frame` (H, W).

    note: a joint dragged past the frame's edge arrives with a negative or too large coordinate; it is
    put on the edge, not turned into a missing joint (negative means missing in the CSV convention)."""
    ok = isinstance(joints, list) and len(joints) == count and all(
        j is None or (isinstance(j, list) and len(j) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in j))
        for j in joints)
    if not ok:
        raise ValueError(f"{where}: expected {count} joints, each [x, y] finite numbers or null")
    missing = np.array([j is None for j in joints])
    if missing.all():
        raise ValueError(f"{where}: every joint is missing; expected at least one")
    kp = np.array([j or [0, 0] for j in joints], np.float64)  # (K, 2)
    kp = streaming.clamp_keypoints(kp, frame)
    kp[missing] = poses.MISSING
    return kp


def hands_of(layout: poses.Layout) -> dict:
    """{body wrist joint: [the joints of its hand]} for the page: dragging a wrist carries its hand along."""
    if layout is not poses.SIGN50:
        return {}
    names = layout.joint_names
    return {names.index(f"{side}_wrist"): list(range(start, start + poses.HAND_POINTS))
            for side, start in (("l", poses.LEFT_HAND), ("r", poses.RIGHT_HAND))}


def data_url(blob: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(blob).decode("ascii")


def from_data_url(text, where: str) -> bytes:
    if not isinstance(text, str) or "," not in text:
        raise ValueError(f"{where}: expected the file's contents as a data URL")
    try:
        return base64.b64decode(text.split(",", 1)[1], validate=True)
    except ValueError:
        raise ValueError(f"{where}: the file's contents are not valid base64") from None


def png_of(image: torch.Tensor) -> bytes:
    """(1, 3, H, W) in [-1, 1] -> PNG bytes (the page stretches it back to the photo's 176:256)."""
    buf = io.BytesIO()
    data.tensor_to_pil(image[0].cpu()).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# One tab: a stream of its own (source, method, steps, one noise), at most one pending pose
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """What a tab's stream is drawn with; a new Spec (new source or settings) restarts its stream."""
    gen: pipeline.Generator
    source: torch.Tensor  # (1, 3, H, W)
    sampling: pipeline.Sampling
    label: str
    source_kp: object = None  # (K, 2) the source's pose in the page's frame; None for an upload


class Session:
    def __init__(self, server: "Server", ws, number: int):
        self.server, self.ws, self.number = server, ws, number
        self.source = server.sources[0]["tensor"]  # (1, 3, H, W)
        self.source_kp = server.sources[0]["keypoints"]  # (K, 2); None for an upload (no pose detector here)
        self.mode, self.steps = server.modes[0], server.modes[0]["steps"]
        self.spec = self.make_spec()
        self.live, self.live_spec = None, None  # built in the generation thread, from self.spec
        self.pending, self.last = None, None  # (seq, keypoints, arrival); the last pose drawn
        self.wake = asyncio.Event()
        self.times, self.ms = [], {}  # since the last log line
        self.dropped = 0  # poses superseded before they were drawn

    def make_spec(self) -> Spec:
        gen = self.server.gens[self.mode["method"]]
        sampling = pipeline.sampling_for(gen.process, self.steps, self.mode["sampler"])
        return Spec(gen, self.source.to(self.server.device), sampling,
                    f"{gen.method} {sampling.sampler} {sampling.steps}", self.source_kp)

    async def run(self):
        await self.send(self.server.hello())
        render = asyncio.create_task(self.render_loop())
        try:
            async for message in self.ws:
                await self.handle(message)
        except ConnectionClosed:
            pass  # a closed tab or a reload: its stream ends, the server goes on
        finally:
            render.cancel()

    async def handle(self, message):
        try:
            msg = json.loads(message) if isinstance(message, str) else None
            if not isinstance(msg, dict):
                raise ValueError("message: expected a JSON object")
            on = {"pose": self.on_pose, "settings": self.on_settings, "source": self.on_source,
                  "sequence": self.on_sequence}.get(msg.get("type"))
            if on is None:
                raise ValueError(f"message type {msg.get('type')!r}: expected pose, settings, source or sequence")
            await on(msg)
        except json.JSONDecodeError:
            await self.send({"type": "error", "message": "message: not valid JSON"})
        except ValueError as e:
            await self.send({"type": "error", "message": str(e)})

    async def on_pose(self, msg):
        self.request(msg.get("seq"), self.server.keypoints(msg.get("keypoints"), "pose"))

    def request(self, seq, kp):
        """The newest pose replaces a pending one: a slow method drops frames, it never falls behind."""
        if self.pending is not None:
            self.dropped += 1
        self.pending = (seq, kp, time.perf_counter())
        self.wake.set()

    def redraw(self):
        if self.last is not None:
            self.request(self.last[0], self.last[1])

    async def on_settings(self, msg):
        mode = next((m for m in self.server.modes if m["id"] == msg.get("mode")), None)
        if mode is None:
            ids = ", ".join(m["id"] for m in self.server.modes)
            raise ValueError(f"method {msg.get('mode')!r}: this server has {ids} (train the others first)")
        steps = msg.get("steps", mode["steps"])
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= mode["max_steps"]:
            raise ValueError(f"steps {steps!r}: expected a whole number from 1 to {mode['max_steps']} for {mode['label']}")
        self.mode, self.steps = mode, steps
        self.spec = self.make_spec()
        await self.send({"type": "ready", "message": f"method: {self.spec.label}"})
        self.redraw()

    async def on_source(self, msg):
        if "test" in msg:
            i = msg["test"]
            if not isinstance(i, int) or not 0 <= i < len(self.server.sources):
                raise ValueError(f"source {i!r}: expected a test source from 0 to {len(self.server.sources) - 1}")
            self.source, name = self.server.sources[i]["tensor"], self.server.sources[i]["name"]
            self.source_kp = self.server.sources[i]["keypoints"]
        else:
            name = f"upload {str(msg.get('name', ''))[:80]!r}"
            image = streaming.read_image(from_data_url(msg.get("upload"), name), name)
            crop = self.server.frame == data.FRAME  # a square DeepFashion copy is cropped to its person
            self.source = streaming.source_tensor(image, self.server.image_size, "cpu", crop)  # (1, 3, H, W)
            self.source_kp = None  # its pose is unknown: the look comes from the source tokens alone
        self.spec = self.make_spec()
        await self.send({"type": "ready", "message": f"source: {name}"})
        self.redraw()

    async def on_sequence(self, msg):
        name = f"upload {str(msg.get('name', ''))[:80]!r}"
        text = msg.get("csv")
        if not isinstance(text, str):
            raise ValueError(f"{name}: expected the CSV's text")
        sequence = streaming.parse_pose_csv(text, name, self.server.frame)
        joints = len(self.server.layout.joint_names)
        if any(len(f) != joints for f in sequence.frames):
            raise ValueError(f"{name}: this checkpoint draws the {joints} joints of {self.server.layout.name}; "
                             f"expected rows of {2 * joints} numbers")
        await self.send({"type": "sequence", "name": name, "fps": sequence.fps,
                         "frames": [pose_json(f) for f in sequence.frames]})

    async def render_loop(self):
        """Draw the newest pose in the generation thread, send it, repeat; the event loop only waits."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.pending is None:
                continue
            seq, kp, arrived = self.pending
            self.pending, self.last = None, (seq, kp)
            try:
                reply = await self.server.in_worker(self.draw, kp, arrived)
            except (ValueError, RuntimeError) as e:  # e.g. an upload the model cannot take
                await self.send({"type": "error", "message": f"generation failed: {e}"})
                continue
            self.count(reply["ms"])
            await self.send({**reply, "seq": seq, "dropped": self.dropped})

    def draw(self, kp, arrived: float) -> dict:
        """In the generation thread: (re)start the stream if its Spec changed, draw, encode the PNG."""
        wait = 1000 * (time.perf_counter() - arrived)  # behind another tab's frame, or a restart
        spec = self.spec  # note: read once; the event loop may replace it meanwhile
        if self.live_spec is not spec:
            self.live = streaming.Live.start(spec.gen, spec.source, self.server.frame, spec.sampling,
                                             self.server.cfg.precision, self.server.cfg.seed, spec.source_kp)
            self.live_spec = spec
        frame = self.live.frame(kp)
        t0 = time.perf_counter()
        png = png_of(frame.image)
        ms = {**frame.ms, "encode": 1000 * (time.perf_counter() - t0), "wait": wait}
        return {"type": "frame", "image": data_url(png), "ms": ms, "label": spec.label}

    def count(self, ms: dict):
        self.times.append(time.perf_counter())
        for k, v in ms.items():
            self.ms[k] = self.ms.get(k, 0.0) + v

    def log_line(self) -> str | None:
        """Frames per second as the page counts them: frames after the first over the time between them."""
        times, n = self.times, len(self.times)
        if n < 2:
            return None
        fps = (n - 1) / (times[-1] - times[0])
        parts = " | ".join(f"{k} {v / n:.1f} ms" for k, v in self.ms.items())
        self.times, self.ms = times[-1:], {}
        return f"[demo] tab {self.number} | {self.spec.label} | {fps:.1f} frames/s | {parts} | dropped {self.dropped}"

    async def send(self, msg: dict):
        try:
            await self.ws.send(json.dumps(msg))
        except ConnectionClosed:
            pass  # the tab went away; run() ends this session


PAGE = Path(__file__).with_name("demo.html")  # the page: plain HTML and JavaScript, nothing fetched elsewhere


def read_page() -> bytes:
    try:
        return PAGE.read_bytes()
    except OSError as err:
        raise FileNotFoundError(f"{PAGE}: the demo's page is missing ({err.strerror}); it ships beside demo.py") from None


# ----------------------------------------------------------------------------------------------
# The server: the page over HTTP, a Session per WebSocket, one generation thread for all
# ----------------------------------------------------------------------------------------------

class Server:
    def __init__(self, cfg: DemoConfig, gens: dict, device):
        self.cfg, self.gens, self.device = cfg, gens, device
        self.image_size = next(iter(gens.values())).image_size
        self.modes = modes_for(gens)
        dataset = test_set(gens)
        self.frame = dataset.frame  # (H, W) of the keypoints: DeepFashion's 256x176, or the signers' frames
        self.layout = poses.layout_of(next(iter(dataset.keypoints.values())))  # COCO-18, or upper body + hands
        self.sources = test_sources(dataset, cfg.sources)
        self.builtin = builtin_sequence(self.sources, dataset)
        # one thread: torch already uses the cores it is given; two frames at once would only split them
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="generate")
        self.sessions, self.opened = {}, 0
        self.page = read_page()

    def keypoints(self, joints, where: str) -> np.ndarray:
        return keypoints_from_json(joints, where, self.frame, len(self.layout.joint_names))

    def hello(self) -> dict:
        layout = self.layout  # the page draws the skeleton as poses.render_pose does
        return {"type": "hello", "modes": self.modes, "builtin": self.builtin, "frame": list(self.frame),
                "limbs": layout.bones, "limb_colors": layout.bone_colors, "limb_widths": layout.bone_widths,
                "joint_colors": layout.joint_colors, "hands": hands_of(layout), "max_upload_mb": self.cfg.max_upload_mb,
                "sources": [{k: s[k] for k in ("name", "image", "pose")} for s in self.sources]}

    async def in_worker(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    def process_request(self, connection, request):
        """The page at /, the stream at /ws, anything else 404."""
        if request.path == "/ws":
            return None  # go on with the WebSocket handshake
        if request.path.split("?")[0] in ("/", "/index.html"):
            body = self.page
            headers = Headers([("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body))),
                               ("Cache-Control", "no-store")])
            return Response(HTTPStatus.OK, "OK", headers, body)
        return connection.respond(HTTPStatus.NOT_FOUND, "not found: the demo's page is at /\n")

    async def handler(self, ws):
        self.opened += 1
        session = self.sessions[self.opened] = Session(self, ws, self.opened)
        print(f"[demo] tab {session.number} connected ({len(self.sessions)} open)", flush=True)
        try:
            await session.run()
        finally:
            del self.sessions[session.number]
            print(f"[demo] tab {session.number} closed ({len(self.sessions)} open)", flush=True)

    async def log_loop(self):
        while True:
            await asyncio.sleep(self.cfg.log_seconds)
            for session in list(self.sessions.values()):
                line = session.log_line()
                if line:
                    print(line, flush=True)

    def warm_up(self):
        """One untimed frame per method before the first tab: allocation (and --compile) happen here."""
        kp = self.keypoints(self.sources[0]["pose"], "warm-up")
        for mode in self.modes:
            gen = self.gens[mode["method"]]
            sampling = pipeline.sampling_for(gen.process, mode["steps"], mode["sampler"])
            live = streaming.Live.start(gen, self.sources[0]["tensor"].to(self.device), self.frame, sampling,
                                        self.cfg.precision, self.cfg.seed, self.sources[0]["keypoints"])
            live.frame(kp)
            ms = live.frame(kp).ms
            print(f"demo.py: {mode['label']} {sampling.steps} steps: {sum(ms.values()):.1f} ms a frame "
                  f"(network {ms['network']:.1f}, decoding {ms['decode']:.1f})", flush=True)


async def serve_page(server: Server, cfg: DemoConfig):
    limit = int(cfg.max_upload_mb * 1024 * 1024 * 4 / 3) + 4096  # base64 grows a file by 4/3
    try:
        ws_server = await serve(server.handler, "127.0.0.1", cfg.port, process_request=server.process_request,
                                max_size=limit)
    except OSError as e:
        raise ValueError(f"--port {cfg.port} on 127.0.0.1: {e.strerror}; pass another --port "
                         f"(0: any free port)") from None
    async with ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        print(f"demo.py: serving http://127.0.0.1:{port}/ (Ctrl-C stops)", flush=True)
        await server.log_loop()


def parse_config(argv=None) -> DemoConfig:
    cfg, _ = cli.parse_config(DemoConfig, argv, __doc__.splitlines()[0])
    if not 0 <= cfg.port <= 65535:
        raise ValueError(f"--port {cfg.port}: expected 0 (any free port) to 65535")
    if not cfg.max_upload_mb > 0 or not cfg.log_seconds > 0 or cfg.sources < BUILTIN_POSES:
        raise ValueError(f"--max-upload-mb and --log-seconds must be above 0, --sources at least {BUILTIN_POSES}")
    return cfg


def run(cfg: DemoConfig):
    device = pipeline.pick_device(cfg.device)
    if device.type == "cpu" and cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    server = Server(cfg, load_models(cfg, device), device)
    server.warm_up()
    asyncio.run(serve_page(server, cfg))


def main(argv=None):
    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # a tab that vanishes mid-handshake is not news
    try:
        run(parse_config(argv))
    except (ValueError, FileNotFoundError, data.DataError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("demo.py: stopped")


if __name__ == "__main__":
    main()
