"""`tokentrim demo`: a browser page (Gradio, `pip install "tokentrim[demo]"`) that streams a rollout block by
block, plots the drift live and runs the baseline and TokenTrim side by side from one seed.

The page is a thin layer over `tokentrim.app.demo_run` (which checks requests and streams runs). Everything the
server writes — gradio's file cache, each session's videos and decision logs, prompt embeddings — lives in one
temporary folder that the command owns and removes when the server stops.
"""

import argparse
import importlib.util
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokentrim.app.args import POSITIVE_INT, add_model_args
from tokentrim.app.demo_run import PAGE_OPTIONS, DemoRunner, DemoUpdate, PageOption, Panel, block_list
from tokentrim.errors import UserError

DEFAULT_FRAMES = {"toy": 30, "tiny": 9}  # latent frames first shown (a few seconds on a CPU); the 1.3B: 21
TOY_SCENES = 8  # held-out scenes offered in the picker
FOLDER_PREFIX = (
    "tokentrim-demo-"  # the server's folder in the temporary folder: tokentrim-demo-<pid>-<random>
)
STATUS_ID, PLOT_ID = "demo-status", "demo-plot"  # element ids the browser test looks for
CSS = (
    ".pixelated img, .pixelated video { image-rendering: pixelated; }"  # nearest neighbour in the browser too
)
# gradio's launch settings: return at once (the command waits itself), no history, no links, the page's CSS
LAUNCH = {
    "prevent_thread_lock": True,
    "quiet": True,
    "footer_links": [],
    "run_history": False,
    "theme": "default",
    "css": CSS,
}
ABOUT = (
    "# TokenTrim demo\n"
    "Generates a video block by block; each block is shown as soon as it is decoded, and the drift plot shows "
    "TokenTrim's severity D_t against its threshold (red crosses: the block was pruned and regenerated; its preview "
    "gets a red border). *Side by side* runs the baseline (TokenTrim and FlowMo off) and TokenTrim from the same "
    "seed, one block of each in turn.\n\n"
    "**One run at a time on this server**: if someone else's run is going, yours waits in the queue."
)


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1 .. 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the port must be an integer, got {text[:40]!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"the port must be from 1 to 65535, got {port}")
    return port


def check_port(host: str, port: int) -> None:
    """Fail early, before weights load, if the server could not listen on host:port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UserError(f"--host {host!r} is not an address of this machine (try 127.0.0.1)") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise UserError(
                f"cannot listen on {host}:{port} ({err.strerror}); choose another --port"
            ) from None


def remove_stale_folders(parent: Path | None = None) -> list[Path]:
    """Remove the folders of demo servers that were killed outright (SIGKILL: no clean-up ran), named
    `tokentrim-demo-<pid>-...` in the temporary folder, whose process no longer runs."""
    removed = []
    for folder in Path(parent or tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        pid = folder.name[len(FOLDER_PREFIX) :].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def scene_choices(count: int = TOY_SCENES) -> list[tuple[str, int]]:
    """The picker's held-out toy scenes: (seed and prompt, seed)."""
    from tokentrim.toy import HELD_OUT_SCENES, sample_scene

    return [(f"{s}: {sample_scene(s).prompt}", s) for s in range(HELD_OUT_SCENES, HELD_OUT_SCENES + count)]


class Sessions:
    """Per-browser-session state: an output folder (files for the downloads) and a cancel flag for its run."""

    def __init__(self, root: Path):
        self.root = root
        self._cancels: dict[str, threading.Event] = {}

    def start(self, session: str) -> tuple[Path, threading.Event]:
        """A fresh output folder (the previous run's files go) and cancel flag for a new run of `session`."""
        folder = self.folder(session)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self._cancels[session] = cancel = threading.Event()
        return folder, cancel

    def folder(self, session: str) -> Path:
        assert session and "/" not in session and session not in (".", ".."), session
        return self.root / session

    def cancel(self, session: str) -> None:
        if session in self._cancels:
            self._cancels[session].set()

    def end(self, session: str) -> None:
        """The tab was closed: stop its run and remove its files."""
        self.cancel(session)
        self._cancels.pop(session, None)
        shutil.rmtree(self.folder(session), ignore_errors=True)


@dataclass
class PanelWidgets:
    """The components of one video panel: the live preview, the finished mp4 and its two downloads."""

    column: Any
    image: Any
    video: Any
    mp4: Any
    log: Any

    @classmethod
    def make(cls, index: int) -> "PanelWidgets":
        import gradio as gr

        with gr.Column(visible=index == 0) as column:
            image = gr.Image(
                label="live",
                format="png",
                interactive=False,
                height=220,
                elem_classes="pixelated",
                elem_id=f"demo-live-{index}",
            )
            video = gr.Video(
                label="finished mp4",
                interactive=False,
                height=220,
                loop=True,
                autoplay=True,
                elem_classes="pixelated",
                elem_id=f"demo-video-{index}",
            )
            with gr.Row():
                mp4 = gr.DownloadButton("mp4", visible=False, size="sm", elem_id=f"demo-mp4-{index}")
                log = gr.DownloadButton("decision log", visible=False, size="sm", elem_id=f"demo-log-{index}")
        return cls(column, image, video, mp4, log)

    def cleared(self, visible: bool) -> dict:
        """Values that empty the panel before a run (and show it only if the run uses it)."""
        import gradio as gr

        hidden = gr.DownloadButton(visible=False)
        return {
            self.column: gr.Column(visible=visible),
            self.image: None,
            self.video: None,
            self.mp4: hidden,
            self.log: hidden,
        }

    def showing(self, panel: Panel, done: bool) -> dict:
        """Values that show a panel's newest block, and its files once the run is done."""
        import gradio as gr

        pruned = f", pruned: {block_list(panel.pruned)}" if panel.pruned else ""
        out = {
            self.column: gr.Column(visible=True),
            self.image: gr.Image(panel.preview, label=f"{panel.label}: live, {panel.frames} frames{pruned}"),
        }
        if done:
            out[self.video] = gr.Video(str(panel.display_video), label=f"{panel.label}: finished mp4")
            out[self.mp4] = gr.DownloadButton(f"{panel.label} mp4", value=str(panel.video), visible=True)
            out[self.log] = gr.DownloadButton(
                f"{panel.label} decision log", value=str(panel.log), visible=True
            )
        return out


def drift_plot(update: DemoUpdate):
    """The drift figure of an update's runs, or None when it need not be redrawn: side by side, it is redrawn
    once both runs have reached the same block (a redraw costs about 0.1 s on a CPU)."""
    from tokentrim.app.figures import drift_figure

    shown = [p for p in update.panels if p.records]
    if not shown or (update.state == "running" and len({len(p.records) for p in update.panels}) > 1):
        return None
    logs = [{"blocks": [r.to_dict() for r in p.records]} for p in shown]
    figure = drift_figure(logs, [p.label for p in shown])
    figure.tight_layout()  # gradio saves the figure as it is laid out: make room for the legend beside the axes
    return figure


def option_widget(opt: PageOption, value: Any):
    """The widget of a declared run option: a checkbox, a radio over its choices, or a number with its range."""
    import gradio as gr

    o, elem_id = opt.option, "demo-" + opt.key.replace(".", "-").replace("_", "-")
    if opt.kind is bool:
        return gr.Checkbox(value, label=o.label, info=o.help, elem_id=elem_id)
    if o.choices is not None:
        return gr.Radio(list(o.choices), value=value, label=o.label, info=o.help, elem_id=elem_id)
    return gr.Number(value, label=o.label, info=f"{o.help}; {o.expected(opt.kind)}", elem_id=elem_id)


def settings_inputs(runner: DemoRunner, frames: int) -> dict[str, Any]:
    """The settings column, as components named by the key of the value they give (`DemoRunner.check`): the
    page's own inputs, then a widget per declared run option (`PAGE_OPTIONS`)."""
    import gradio as gr

    from tokentrim.pipelines import pipeline_names

    choices = scene_choices() if runner.toy else [("0", 0)]
    names = pipeline_names()
    inputs = {
        "scene": gr.Dropdown(
            choices,
            value=choices[0][1],
            label="Toy scene (its prompt and observed first block)",
            visible=runner.toy,
        ),
        "prompt": gr.Textbox(label="Prompt", lines=2, visible=not runner.toy),
        "pipeline": gr.Dropdown(names, value=names[0], label="Pipeline"),
        "side_by_side": gr.Checkbox(
            False, label="Side by side: baseline and TokenTrim from the same seed", elem_id="demo-side"
        ),
    }
    starting = {"latent_frames": frames, "seed": 0}  # the request's own fields have no default to show
    for opt in PAGE_OPTIONS:
        inputs[opt.key] = option_widget(opt, starting.get(opt.key, opt.default))
    return inputs


def build_page(runner: DemoRunner, sessions: Sessions, frames: int):
    """The Gradio page (not launched). Import gradio only after GRADIO_TEMP_DIR is set (see `cmd_demo`)."""
    import gradio as gr

    with gr.Blocks(title="TokenTrim demo", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown(ABOUT)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                inputs = settings_inputs(runner, frames)
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="demo-generate")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="demo-cancel")
            with gr.Column(scale=2):
                status = gr.Markdown("Choose the settings and press **Generate**.", elem_id=STATUS_ID)
                with gr.Row():
                    panels = [PanelWidgets.make(i) for i in range(2)]
                plot = gr.Plot(label="drift severity per block", format="png", elem_id=PLOT_ID)

        def run(values: dict, request: gr.Request):
            """One Generate click; `values` maps each input component to its value (inputs given as a set)."""
            folder, cancel_flag = sessions.start(request.session_hash)
            asked = {name: values[component] for name, component in inputs.items()}
            cleared = {plot: None, status: "Starting…"}
            for i, widgets in enumerate(panels):
                cleared |= widgets.cleared(visible=i == 0 or asked["side_by_side"])
            yield cleared
            for update in runner.stream(asked, folder, cancel_flag):
                out = {status: ("**Error:** " if update.state == "error" else "") + update.status}
                figure = drift_plot(update)
                if figure is not None:
                    out[plot] = figure
                for widgets, panel in zip(panels, update.panels, strict=False):
                    out |= widgets.showing(panel, done=update.state == "done")
                yield out

        def stop(request: gr.Request) -> None:
            sessions.cancel(request.session_hash)

        def leave(request: gr.Request) -> None:
            sessions.end(request.session_hash)

        outputs = [status, plot, *(w for p in panels for w in (p.column, p.image, p.video, p.mp4, p.log))]
        # The queue runs one generation at a time (the model is shared); Cancel bypasses it.
        generate.click(run, set(inputs.values()), outputs, concurrency_limit=1, show_progress="minimal")
        cancel.click(stop, None, None, queue=False)
        page.unload(leave)
    return page


def cmd_demo(args: argparse.Namespace) -> int:
    from tokentrim.app import backends
    from tokentrim.app.args import load_model, runtime

    # 1. Everything checked before weights load
    preset = args.preset = args.preset if args.preset or args.model_dir or args.checkpoint else "toy"
    if preset is not None and (args.model_dir or args.checkpoint):
        raise UserError(f"--preset {preset} uses built-in weights: drop --model-dir / --checkpoint")
    if preset is None and not (args.model_dir and args.checkpoint):
        raise UserError("the official weights need both --model-dir and --checkpoint")
    if importlib.util.find_spec("gradio") is None:  # not imported yet: see step 2
        raise UserError('the demo needs Gradio: pip install "tokentrim[demo]"')
    device, dtype, attention = runtime(args)
    backends.model_config(preset, args.model_dir)
    check_port(args.host, args.port)
    # 2. The folder the server owns, for gradio's files (it reads GRADIO_TEMP_DIR when first imported) and
    #    torch's compile cache (made in TMPDIR when torch._dynamo is imported, as the model loads; unused here)
    remove_stale_folders()
    root = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))
    page = None
    try:
        os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "torchinductor"))
        backend = load_model(args, device, dtype, attention)
        runner = DemoRunner(backend, preset, args.max_latent_frames, root / "embeddings")
        sessions = Sessions(root / "runs")
        page = build_page(runner, sessions, DEFAULT_FRAMES.get(preset, 21))
        page.queue(max_size=32)
        # 3. Serve until Ctrl-C / SIGTERM (the CLI turns both into exceptions; the folder goes in `finally`)
        _, url, _ = page.launch(
            server_name=args.host, server_port=args.port, allowed_paths=[str(sessions.root)], **LAUNCH
        )
        print(f"TokenTrim demo ({backend.name}) at {url}  (Ctrl-C to stop)", flush=True)
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"note: listening on {args.host}: anyone who can reach it can use the demo", flush=True)
        while page.is_running:
            time.sleep(0.2)
    finally:
        if page is not None:
            page.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="serve a browser demo: live rollout, drift plot, side by side",
        description="A web page that generates a video block by block with TokenTrim, plots "
        'the drift live and compares with the baseline (needs pip install "tokentrim[demo]"). '
        "Without a model it serves the toy world model.",
    )
    add_model_args(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network interface)"
    )
    p.add_argument("--port", type=port_number, default=7860, help="TCP port, 1 .. 65535")
    p.add_argument(
        "--max-latent-frames",
        type=POSITIVE_INT,
        default=240,
        help="the longest rollout a page may ask for, in latent frames",
    )
    p.set_defaults(func=cmd_demo)
