"""Serving the app: localhost by default; listening on the network only with a password.

Gradio's own temporary files go into the output folder too, and only that folder is allowed, so
the app serves no other file of the machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from traintrain.errors import UserError

LOCALHOST = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"
DEFAULT_PORT = 7860
LISTEN_FIELD = "listen"
AUTH_FIELD = "auth"
AUTH_FILE_FIELD = "auth_file"


@dataclass
class ServeOptions:
    output_dir: Path = Path("output")
    models_dir: Path | None = None
    port: int = DEFAULT_PORT
    listen: bool = False
    auth: str | None = None  # "user:password"
    auth_file: Path | None = None  # one user:password per line


def credentials(options: ServeOptions) -> list[tuple[str, str]]:
    """The users allowed in; none means localhost only, and listening without any is refused."""
    pairs = []
    if options.auth:
        pairs.append(_pair(options.auth, AUTH_FIELD))
    if options.auth_file:
        path = Path(options.auth_file)
        if not path.is_file():
            raise UserError(f"password file {path} not found", "give a file of user:password lines",
                            field=AUTH_FILE_FIELD)
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        pairs += [_pair(line, AUTH_FILE_FIELD) for line in lines if line and not line.startswith("#")]
    if options.listen and not pairs:
        raise UserError("listening on the network without a password would let anyone on it train and read "
                        "your files", "give a user:password (or a password file), or serve on this machine only",
                        field=LISTEN_FIELD)
    return pairs


def _pair(text: str, field: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UserError(f"'{text}' is not user:password", "write the user name, a colon and the password",
                        field=field)
    return user, password


def serve(options: ServeOptions, *, block: bool = True):
    """Start the job manager and the app; with `block`, until Ctrl-C (the running job then saves)."""
    users = credentials(options)
    output_dir = Path(options.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(output_dir / ".gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from traintrain.jobs.manager import JobManager
    from traintrain.ui import compat
    from traintrain.ui.app import build_app
    from traintrain.ui.host import StandaloneHost, picker_lists

    # The folders and model list through the same interface a Web-UI host fills in; no GPU to share.
    host = StandaloneHost(output_dir, options.models_dir)
    manager = JobManager(host.data_dir, lora_dir=host.lora_dir)
    app = build_app(manager, output_dir=host.data_dir, lists=picker_lists(host))
    compat.enable_queue(app, 4)
    try:
        app.launch(
            server_name=ALL_INTERFACES if options.listen else LOCALHOST, server_port=options.port,
            auth=users or None, allowed_paths=[str(output_dir)], prevent_thread_lock=True, quiet=True,
            show_error=True,
        )
    except BaseException:
        manager.close()
        raise
    if not block:
        return app, manager
    try:
        app.block_thread()
    finally:
        app.close()
        manager.close()
    return app, manager
