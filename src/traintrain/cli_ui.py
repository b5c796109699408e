"""`traintrain ui`: the command line's door to the web UI (ui/server.py does the serving)."""

from __future__ import annotations

import argparse
from pathlib import Path

from traintrain.ui.server import DEFAULT_PORT, ServeOptions, credentials

UI_FLAGS = {"listen": "--listen", "auth": "--auth", "auth_file": "--auth-file"}


def add_ui_parser(commands) -> None:
    ui = commands.add_parser(
        "ui", help="the web UI: form, Start Training, live loss plot and previews, queue, history, presets",
        description="Serve the web UI on http://127.0.0.1:PORT (this machine only, unless --listen).",
    )
    ui.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT})")
    ui.add_argument("--listen", action="store_true",
                    help="serve on every network interface (then --auth or --auth-file is required)")
    ui.add_argument("--auth", metavar="USER:PASSWORD", help="the user name and password the page asks for")
    ui.add_argument("--auth-file", metavar="FILE", help="a file of user:password lines")
    ui.add_argument("--models-dir", metavar="DIR", help="folder whose checkpoints and diffusers models are listed")
    ui.add_argument("--output-dir", default="output", metavar="DIR",
                    help="where LoRAs, logs, the queue and presets go (default: ./output)")
    ui.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")


def command_ui(args) -> int:
    from traintrain.ui.server import serve

    options = ServeOptions(
        output_dir=Path(args.output_dir), models_dir=Path(args.models_dir) if args.models_dir else None,
        port=args.port, listen=args.listen, auth=args.auth, auth_file=Path(args.auth_file) if args.auth_file else None,
    )
    credentials(options)  # refuse --listen without a password before anything starts
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    print(f"traintrain: serving the web UI on http://{host}:{args.port} (Ctrl-C stops; a running job saves)",
          flush=True)
    try:
        serve(options)
    except KeyboardInterrupt:
        pass
    return 0
