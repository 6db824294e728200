"""``tsm-demo``: real-time gesture recognition on a camera, a video, a folder of frames or synthetic frames.

Thin by design: parse, check everything that can be checked before the model
loads (output paths, window availability, the port of the browser view, the
source), then hand over to :func:`online_tsm.demo.app.run_demo`.

Where the frames are shown: an OpenCV window when there is a display and
OpenCV has its GUI; the browser view (:mod:`online_tsm.demo.web`) with
``--serve`` or when a window cannot be opened, so a fresh install never stops
at "no GUI"; nothing but files with ``--headless``.
"""
from __future__ import annotations

import argparse
import sys
import webbrowser
from typing import Sequence

from online_tsm.console.cli_util import add_debug_flag, positive_float, positive_int, run_cli, seconds

from online_tsm.errors import UserError
from online_tsm.demo.app import DemoOptions, run_demo
from online_tsm.demo.model import UNTRAINED_WARNING, default_backend, load_demo_model
from online_tsm.demo.sinks import (LOG_SUFFIXES, SCREENSHOT_SUFFIXES, VIDEO_CODECS, ChangePrinter, JsonlSink,
                                   ScreenshotSink, Sink, VideoSink, check_output_path)
from online_tsm.demo.sources import SOURCE_HELP, CameraLostError, open_source
from online_tsm.demo.stopping import StopRequest
from online_tsm.demo.web import DEFAULT_HOST, DEFAULT_PORT, LiveView, desktop_available, exposure_warning, \
    machine_address, parse_serve_address
from online_tsm.demo.window import window_problem
from online_tsm.streaming.smoothing import DEFAULT_DEBOUNCE, DEFAULT_HISTORY, PredictionSmoother, default_ignored, resolve_ignored


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tsm-demo", description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog="Window keys: q or Esc quits, f toggles full screen. Example without camera or screen: "
               "tsm-demo --source synthetic --headless --output out.mp4 --log preds.jsonl --frames 120")
    src = p.add_argument_group("input")
    src.add_argument("--source", default="0", help=f"{SOURCE_HELP} (default: camera 0)")
    src.add_argument("--width", type=positive_int, default=320, help="camera / synthetic frame width (default 320)")
    src.add_argument("--height", type=positive_int, default=240,
                     help="camera / synthetic frame height (default 240, as in the paper's demo)")
    src.add_argument("--fps", type=positive_float, default=30.0,
                     help="frame rate of a folder of frames or synthetic frames (default 30)")
    src.add_argument("--frames", type=positive_int, help="stop after this many frames (default: until the end)")
    src.add_argument("--queue", type=positive_int, default=1,
                     help="camera frames buffered before the oldest is dropped (default 1: always the newest)")
    src.add_argument("--seed", type=int, default=0, help="seed of synthetic frames and of untrained weights")
    src.add_argument("--reconnect", type=seconds, default=0.0, metavar="SECONDS",
                     help="reopen a camera that stops delivering for up to this long, with growing pauses; the "
                          "predictions start over (default 0: stop with exit code 3)")

    model = p.add_argument_group("model")
    model.add_argument("--backend", default=default_backend(),
                       help=f"runtime backend (default {default_backend()})")
    which = model.add_mutually_exclusive_group()
    which.add_argument("--artifact", metavar="DIR", help="export folder written by tsm-export")
    which.add_argument("--weights", metavar="PATH_OR_NAME",
                       help="checkpoint file or registry name, e.g. 'jester' (default: the shipped default model)")

    model.add_argument("--threads", type=positive_int, help="CPU threads of the backend (default: its own)")
    model.add_argument("--address", metavar="HOST:PORT", help="RPC server of the device (--backend tvm-rpc)")

    smooth = p.add_argument_group("smoothing")
    smooth.add_argument("--history", type=positive_int,
                        help="average the logits of this many inferences (default: half the model's training "
                             f"clip when recorded, else {DEFAULT_HISTORY} as the paper's demo)")
    smooth.add_argument("--debounce", type=positive_int,
                        help="consecutive inferences a new class needs before it is shown (1 = switch at once; "
                             f"default: 1 with a recorded training pace, else {DEFAULT_DEBOUNCE})")
    smooth.add_argument("--ignore", metavar="NAMES",
                        help="comma-separated class names never shown ('' for none; default for the 27 Jester "
                             "classes: the five the paper's demo ignored, e.g. 'Rolling Hand Forward')")
    smooth.add_argument("--every", type=positive_int,
                        help="run the model on every n-th frame only, drawing all (default: the frame stride the "
                             "model was trained at when its checkpoint records it, e.g. 4 for the shipped "
                             "default model; else 1)")

    out = p.add_argument_group("output")
    out.add_argument("--headless", action="store_true",
                     help="no window and no browser view unless --serve is given (servers, SSH, CI)")
    out.add_argument("--serve", metavar="[HOST:]PORT",
                     help="show the live view in a browser at http://HOST:PORT/ instead of a window (HOST "
                          f"defaults to {DEFAULT_HOST}: this machine only; 0.0.0.0 shows the camera to the "
                          "network; PORT 0 picks a free one). Started by itself when no window can be opened")
    out.add_argument("--token", metavar="SECRET",
                     help="the browser view answers only requests with ?token=SECRET (401 otherwise)")
    out.add_argument("--output", metavar="FILE", help=f"write the annotated video ({', '.join(VIDEO_CODECS)}; "
                                                      "MPEG-4 Part 2, as OpenCV's wheels have no H.264 encoder)")
    out.add_argument("--log", metavar="FILE", help="write one JSON object per frame (.jsonl)")
    out.add_argument("--screenshot", metavar="FILE", help="save the last annotated frame (.png or .jpg)")
    out.add_argument("--display-width", type=int, default=640,
                     help="draw and write frames at this width (default 640; 0 = as captured)")
    add_debug_flag(p)
    return p


def demo_main(args: argparse.Namespace) -> int:
    # Everything that can fail cheaply fails before the model loads.
    sinks: list[Sink] = []
    if args.output:
        check_output_path(args.output, VIDEO_CODECS, "output video")
    if args.log:
        check_output_path(args.log, LOG_SUFFIXES, "log file")
    if args.screenshot:
        check_output_path(args.screenshot, SCREENSHOT_SUFFIXES, "screenshot")
    if args.display_width < 0:
        raise UserError(f"--display-width must be >= 0, got {args.display_width}")
    if args.token is not None and not args.token.strip():
        raise UserError("--token must not be empty")
    if args.token and not args.serve:
        raise UserError("--token protects the browser view: pass --serve [HOST:]PORT with it")
    view = start_view(args)
    if view is None and not args.headless:
        from online_tsm.demo.window import WindowSink  # only a windowed run needs HighGUI
        sinks.append(WindowSink())
    try:
        return run(args, sinks, view)
    finally:
        if view is not None:
            view.close()  # also when the model or the source failed to open


def start_view(args: argparse.Namespace) -> LiveView | None:
    """The browser view: asked for with ``--serve``, or instead of a window that cannot be opened."""
    if args.serve:
        host, port = parse_serve_address(args.serve)
        warning = exposure_warning(host, args.token)
        if warning:
            print(f"tsm-demo: {warning}", file=sys.stderr)
        view = LiveView(host, port, token=args.token)
        print(f"tsm-demo: browser view at {view.url}"
              + ("" if warning is None or host not in ("0.0.0.0", "::")
                 else f" (from other machines: http://{machine_address()}:{view.port}/"
                      + (f"?{view.url.split('?', 1)[1]})" if args.token else ")")), file=sys.stderr)
        return view
    problem = None if args.headless else window_problem()
    if problem is None:
        return None
    try:
        view = LiveView(DEFAULT_HOST, DEFAULT_PORT)
    except UserError:  # the usual port is taken: any free one will do
        view = LiveView(DEFAULT_HOST, 0)
    print(f"tsm-demo: no window ({problem}); showing the live view in the browser at {view.url} "
          "(--headless: files only)", file=sys.stderr)
    if desktop_available():
        webbrowser.open(view.url)
    return view


def run(args: argparse.Namespace, sinks: list[Sink], view: LiveView | None) -> int:
    with StopRequest() as stop:
        source = open_source(args.source, width=args.width, height=args.height, fps=args.fps,
                             queue_size=args.queue, seed=args.seed, reconnect=args.reconnect)
        with source:
            if hasattr(source, "cancel"):
                stop.on_request.append(source.cancel)   # a stop must not wait out a camera reconnect
            demo = load_demo_model(args.backend, artifact=args.artifact, weights=args.weights, seed=args.seed,
                                   threads=args.threads, address=args.address)
            runtime = demo.runtime
            with runtime:
                ignored = default_ignored(runtime.labels) if args.ignore is None \
                    else resolve_ignored(args.ignore, runtime.labels)
                pace = demo.pace
                every = args.every or pace.every
                history = args.history or pace.history
                debounce = args.debounce or pace.debounce
                smoother = PredictionSmoother(runtime.n_class, history=history, debounce=debounce, ignore=ignored)
                if args.output:
                    sinks.append(VideoSink(args.output, source.fps, measure_fps=source.live))
                if args.log:
                    sinks.append(JsonlSink(args.log))
                if args.screenshot:
                    sinks.append(ScreenshotSink(args.screenshot))
                if view is not None:
                    view.info.update(classes=list(runtime.labels), backend=runtime.backend,
                                     source=source.description, every=every, history=history, debounce=debounce,
                                     untrained=demo.untrained)
                    sinks.append(view)
                elif args.headless and not (args.output or args.log):
                    sinks.append(ChangePrinter())
                warn = UNTRAINED_WARNING if demo.untrained else ""
                print(f"tsm-demo: {source.description} -> {runtime.backend} "
                      f"({runtime.description or 'runtime'}); {demo.source}; {runtime.n_class} classes",
                      file=sys.stderr)
                print(f"tsm-demo: inference every {every} frame(s), logits averaged over {history}, "
                      f"debounce {debounce}" + ("" if (args.every, args.history, args.debounce) != (None, None, None)
                                                 else f" ({pace.reason})"), file=sys.stderr)
                if ignored:
                    print(f"tsm-demo: ignoring {', '.join(runtime.labels[i] for i in ignored)}", file=sys.stderr)
                if demo.untrained:
                    print(f"tsm-demo: warning: {UNTRAINED_WARNING} -- predictions are meaningless; "
                          "pass --weights or --artifact for a trained model", file=sys.stderr)
                options = DemoOptions(every=every, max_frames=args.frames, display_width=args.display_width,
                                      pace=not args.headless or view is not None, warning=warn)
                try:
                    summary = run_demo(runtime, source, smoother, sinks, options, stop=stop)
                except CameraLostError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return exc.exit_code
    written = ", ".join(str(p) for p in (args.output, args.log, args.screenshot) if p)
    served = "" if view is None else (f"; browser view: {view.stats.frames_sent} frames sent, "
                                      f"{view.stats.frames_skipped} skipped for slow viewers")
    print(f"tsm-demo: {summary.frames} frames in {summary.seconds:.1f} s ({summary.video_fps:.1f} fps shown; "
          f"model {summary.model_fps:.1f} inferences/s on {runtime.backend}; {summary.inferences} inferences), "
          f"{summary.dropped} dropped" + (f", {summary.reconnects} camera reconnect(s)" if summary.reconnects else "")
          + served + (f"; wrote {written}" if written else "")
          + (f"; stopped by {summary.stopped_by}" if summary.stopped_by else ""), file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(demo_main, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
