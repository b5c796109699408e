"""The command line face: parse, build a validated TrainConfig, run the core, render its events.

Exit codes: 0 done; 2 bad input (one line naming the problem and the fix, no traceback unless
--debug); 3 training diverged (a non-finite loss or gradient; the last good save is kept); 130
stopped by Ctrl-C / SIGTERM (the first saves `{name}_{step}steps` and a state to --resume from, the
second aborts at once without saving).
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from traintrain.cli_processes import is_main_process, launch, launched, positive_count
from traintrain.cli_queue import add_queue_parser, command_queue
from traintrain.cli_ui import UI_FLAGS, add_ui_parser, command_ui
from traintrain.config import Choice, TrainConfig, default_settings, parameter_types
from traintrain.errors import OUTPUT_DIR, RESUME_STATE, TOKENIZER_DIR, NonFiniteLoss, TrainingStopped, UserError

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"traintrain: error: {message} (see --help)\n")


def _parameter_table() -> str:
    lines = ["parameters for --set KEY=VALUE (and preset/config JSON keys):"]
    defaults = default_settings()
    types = parameter_types()
    for f in fields(TrainConfig):
        if f.name == "second_pass":
            continue
        default = defaults[f.name]
        if isinstance(default, list):
            default = ",".join(str(v) for v in default)
        kind = types[f.name]
        choices = (
            " {" + "|".join(m.value for m in kind) + "}" if isinstance(kind, type) and issubclass(kind, Choice) else ""
        )
        lines.append(f"  {f.name}{choices}\n      {f.metadata['help']} (default: {default!s:.60})")
    lines.append("lists are comma-separated (network_blocks=IN01,OUT03); booleans are true/false.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="traintrain", description="Train LoRA, iLECO and Difference adapters for Stable Diffusion."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    train = commands.add_parser(
        "train",
        help="train an adapter",
        epilog=_parameter_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a LoRA (images), iLECO (two prompts) or Difference (two images) adapter.",
    )
    source = train.add_mutually_exclusive_group()
    source.add_argument(
        "--preset", metavar="NAME", help="start from a shipped preset (LoRA, iLECO, Difference, Difference_Use2ndPass)"
    )
    source.add_argument("--config", metavar="FILE", help="start from a settings JSON file")
    source.add_argument(
        "--resume",
        metavar="STATE",
        help="continue a stopped run from its {name}_{step}steps.state, or a finished one (save_state=true) from its "
        "{name}.state with --set train_iterations=N (settings, seed and position come from the state; "
        "--model, --output-dir and --tokenizer may point elsewhere)",
    )
    train.add_argument("--mode", help="LoRA, iLECO or Difference (case-insensitive)")
    train.add_argument("--model", metavar="PATH", help="base model: .safetensors/.ckpt file or diffusers folder")
    train.add_argument("--data", metavar="DIR", help="LoRA mode: folder of images (same as lora_data_directory)")
    train.add_argument(
        "--output-dir",
        metavar="DIR",
        help="where the LoRA is saved (default: ./output; with --resume: the run's folder)",
    )
    train.add_argument(
        "--tokenizer", metavar="DIR", help="folder with the tokenizer (vocab.json, merges.txt) for single-file models"
    )
    train.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="set a parameter (repeatable); see the list below",
    )
    train.add_argument(
        "--nan-policy",
        choices=["stop", "skip"],
        help="a non-finite loss or gradient: stop (default, exit code 3, the last save kept) or skip the step "
        "(train_nan_policy, at most train_nan_skip_limit times)",
    )
    train.add_argument(
        "--num-processes", metavar="N", type=positive_count, default=1,
        help="data-parallel training in N processes (one per GPU; gloo on the CPU), each on 1/N of every batch: "
        "the same as accelerate launch --num_processes N -m traintrain train ...",
    )
    train.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")

    tiny = commands.add_parser("tiny-model", help="write a tiny random-weight model to check a set-up in seconds")
    tiny.add_argument("--family", choices=["sd1", "sd2", "sdxl"], default="sd1", help="model family (default sd1)")
    tiny.add_argument(
        "--format",
        choices=["single-file", "diffusers"],
        default="single-file",
        help="file layout (default single-file)",
    )
    tiny.add_argument("--out", required=True, metavar="PATH", help="output .safetensors file or folder")
    tiny.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    tiny.add_argument("--toy-world", action="store_true",
                      help="the toy-world model instead (SD1, trained on shapes in colours: prompts steer it)")
    tiny.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")

    demo = commands.add_parser(
        "demo", help="train LoRA, iLECO and a Difference slider on the toy-world model; one before/after picture"
    )
    demo.add_argument(
        "--out", default="demo_output", metavar="DIR", help="folder for the demo files (default demo_output)"
    )
    demo.add_argument(
        "--steps", type=int, default=None, help="training steps of each job (default: each mode's own; about "
        "three minutes in all on 2 CPU cores)"
    )
    demo.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    buckets = commands.add_parser(
        "buckets",
        help="show the bucket plan (frames, where each image goes) without training",
        description="Dry run of the image buckets: the frames (width x height) and, with --data, the frames of "
        "every image and the number of training samples. Options default to --config's values, else the defaults.",
    )
    buckets.add_argument("--config", metavar="FILE", help="take the image settings from a settings JSON file")
    buckets.add_argument("--image-size", metavar="H,W", help="training size as height,width (one value = square)")
    buckets.add_argument("--step", metavar="PX", help="bucket size step (image_buckets_step)")
    buckets.add_argument("--min-length", metavar="PX", help="shortest bucket side (image_min_length)")
    buckets.add_argument("--max-ratio", metavar="R", help="largest aspect ratio (image_max_ratio)")
    buckets.add_argument("--sub-image-num", metavar="N", help="extra smaller frames per image (sub_image_num)")
    buckets.add_argument("--mirroring", action="store_true", help="count flipped copies (image_mirroring)")
    buckets.add_argument("--num-multiply", metavar="N", help="repeats of every image (image_num_multiply)")
    buckets.add_argument("--disable-upscale", action="store_true", help="never enlarge images (image_disable_upscale)")
    buckets.add_argument("--data", metavar="DIR", help="folder of images to plan (lora_data_directory)")
    buckets.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    buckets.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    inspect = commands.add_parser(
        "inspect", help="show what a LoRA file is: family, network type, ranks, blocks, metadata"
    )
    inspect.add_argument("file", metavar="FILE", help="a .safetensors LoRA / LoCon / LoHa / LoKr file")
    inspect.add_argument(
        "--json", action="store_true", help="print the summary as JSON (every module's rank and alpha)"
    )
    inspect.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    plot = commands.add_parser(
        "plot",
        help="draw a run's loss (raw and averaged) and learning rate against step as a PNG",
        description="Plot a CSV loss log (logging_save_csv): the given file or log name, else the newest log in "
        "the output folder's logs.",
    )
    plot.add_argument("csv", nargs="?", metavar="CSV", help="a CSV log file, or a log's name in the logs folder")
    plot.add_argument("--out", required=True, metavar="PNG", help="the PNG file to write")
    plot.add_argument("--log-scale", action="store_true", help="loss on a logarithmic axis")
    plot.add_argument(
        "--output-dir", default="output", metavar="DIR", help="the training output folder (default: ./output)"
    )
    plot.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    add_ui_parser(commands)
    add_queue_parser(commands, OneLineParser)
    # more subcommands: each adds its parser here and its handler to COMMANDS
    return parser


def parse_assignments(items: list[str]) -> dict[str, str]:
    values = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. --set network_rank=8")
        key, value = item.split("=", 1)
        values[key.strip().replace("-", "_")] = value
    return values


def config_from_args(args) -> TrainConfig:
    from traintrain.presets import load_preset

    if args.preset:
        config = load_preset(args.preset)
    elif args.config:
        config = TrainConfig.load_json(Path(args.config))
    else:
        config = TrainConfig()
    values = parse_assignments(args.set)
    if args.mode:
        values["mode"] = args.mode
    if args.model:
        values["model"] = args.model
    if args.data:
        values["lora_data_directory"] = args.data
    if args.nan_policy:
        values["train_nan_policy"] = args.nan_policy
    return config.with_values(**values)


@contextmanager
def stop_on_signals(stop: threading.Event):
    """The first Ctrl-C or SIGTERM asks the run to save and stop after its current step; the second
    aborts at once without saving (KeyboardInterrupt)."""

    def handle(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        sys.stderr.write(
            "\ntraintrain: stopping after this step to save it; press Ctrl-C again to abort without saving\n"
        )

    previous = {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _command_train(args) -> int:
    from traintrain.cli_progress import ProgressPrinter
    from traintrain.jobs.runner import resume_job, run_job

    output_dir = Path(args.output_dir) if args.output_dir else None
    resume_values = parse_assignments(args.set) if args.resume else {}
    if args.resume:
        given = [
            option
            for option, value in (("--mode", args.mode), ("--data", args.data), ("--nan-policy", args.nan_policy))
            if value
        ]
        given += [f"--set {key}" for key in resume_values if key != "train_iterations"]
        if given:
            raise UserError(
                f"--resume takes the settings from the state (only --set train_iterations=N may change); "
                f"drop {', '.join(given)}"
            )
        if args.model and not Path(args.model).exists():
            raise UserError(f"model not found: {args.model} (give a .safetensors/.ckpt file or a diffusers folder)")
    else:
        config = config_from_args(args)
        if config.model and not Path(config.model).exists():
            raise UserError(f"model not found: {config.model} (give a .safetensors/.ckpt file or a diffusers folder)")
    if args.num_processes > 1 and not launched():
        from traintrain.cli_processes import check_launch
        from traintrain.jobs.runner import check_inputs

        if not args.resume:
            check_inputs(config)
        check_launch(args.num_processes, None if args.resume else config.train_batch_size)
        return launch(args.argv, args.num_processes)
    iterations = None
    if "train_iterations" in resume_values:
        iterations = TrainConfig().with_values(train_iterations=resume_values["train_iterations"]).train_iterations
    stop = threading.Event()
    try:
        with stop_on_signals(stop), ProgressPrinter() as printer:
            if args.resume:
                result = resume_job(
                    Path(args.resume),
                    output_dir=output_dir,
                    tokenizer_dir=args.tokenizer,
                    model=args.model,
                    train_iterations=iterations,
                    report=printer,
                    stop=stop,
                )
            else:
                printer.verbose = config.logging_verbose
                result = run_job(
                    config,
                    output_dir=output_dir or Path("output"),
                    tokenizer_dir=args.tokenizer,
                    report=printer,
                    stop=stop,
                )
    except TrainingStopped as exc:
        resume = f"; continue with: traintrain train --resume {exc.state}" if exc.state else ""
        if is_main_process():
            print(f"traintrain: {exc}{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NonFiniteLoss as exc:
        if is_main_process():
            print(f"traintrain: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    if is_main_process():
        print(f"saved {result.path} (seed {result.seed})")
    return 0


def _command_tiny(args) -> int:
    from traintrain.models.tiny import write_tiny_model

    if args.toy_world:
        from traintrain.toyworld.release import write_toy_model

        if args.family != "sd1":
            raise UserError(f"the toy-world model is sd1, not {args.family}", "leave out --family with --toy-world")
        path = write_toy_model(args.format, Path(args.out))
        print(f"wrote the toy-world model ({args.format}) to {path}")
        return 0
    path = write_tiny_model(args.family, args.format, Path(args.out), seed=args.seed)
    print(f"wrote tiny {args.family} model ({args.format}) to {path}")
    return 0


def _command_demo(args) -> int:
    from traintrain.cli_progress import ProgressPrinter
    from traintrain.demo import run_demo

    with ProgressPrinter(verbose=False) as printer:
        result = run_demo(Path(args.out), steps=args.steps, report=printer)
    for mode, path in result.lora_paths.items():
        print(f"{mode}: {path}")
    print(f"all three modes, before and after: {result.image_path}")
    return 0


def _command_buckets(args) -> int:
    import json

    from traintrain.cli_progress import ProgressPrinter
    from traintrain.data.plan_report import dry_run, plan_json, plan_lines

    options = {
        "image_size": args.image_size,
        "image_buckets_step": args.step,
        "image_min_length": args.min_length,
        "image_max_ratio": args.max_ratio,
        "sub_image_num": args.sub_image_num,
        "image_num_multiply": args.num_multiply,
        "lora_data_directory": args.data,
        "image_mirroring": args.mirroring or None,
        "image_disable_upscale": args.disable_upscale or None,
    }
    config = TrainConfig.load_json(Path(args.config)) if args.config else TrainConfig()
    config = config.with_values(**{key: value for key, value in options.items() if value is not None})
    with ProgressPrinter(stream=sys.stderr) as printer:  # warnings about skipped images go to stderr
        plan, assignment = dry_run(config, printer)
    print(
        json.dumps(plan_json(plan, assignment), ensure_ascii=False)
        if args.json
        else "\n".join(plan_lines(plan, assignment))
    )
    return 0


def _command_inspect(args) -> int:
    from traintrain.networks.inspect import format_summary, inspect_lora, summary_json

    summary = inspect_lora(Path(args.file))
    print(summary_json(summary) if args.json else format_summary(summary))
    return 0


def _command_plot(args) -> int:
    from traintrain.training.loss_history import find_loss_log, logs_folder, read_loss_log
    from traintrain.training.loss_plot import write_loss_plot

    source = find_loss_log(args.csv, logs_folder(Path(args.output_dir)))
    log = read_loss_log(source)
    target = write_loss_plot(log, Path(args.out), log_scale=args.log_scale, title=log.run_name or source.stem)
    print(f"wrote {target} ({len(log.steps)} steps from {source})")
    return 0


COMMANDS = {
    "train": _command_train,
    "tiny-model": _command_tiny,
    "demo": _command_demo,
    "buckets": _command_buckets,
    "inspect": _command_inspect,
    "plot": _command_plot,
    "ui": command_ui,
    "queue": command_queue,
}


def quiet_libraries() -> None:
    """Library chatter (deprecations, dtype notes, optional-kernel notes) would bury our own messages."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # imported by diffusers; warns about CPU kernels

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)


# OS errors caused by the user's disks and folders, not by our code: one line, like bad input.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.ENAMETOOLONG}


# The flag that sets a field; any other config field is set with --set FIELD=VALUE.
FIELD_FLAGS = {
    "model": "--model",
    "lora_data_directory": "--data",
    "mode": "--mode",
    "train_nan_policy": "--nan-policy",
    OUTPUT_DIR: "--output-dir",
    TOKENIZER_DIR: "--tokenizer",
    RESUME_STATE: "--resume",
    **UI_FLAGS,
}


def render_user_error(error: UserError) -> str:
    """The core's error in command-line words: its setting named as the flag that sets it."""
    if error.field is None:
        return error.message
    return f"{FIELD_FLAGS.get(error.field, error.field)}: {error.message}"


def _one_line_error(args, message: str) -> int:
    if args.debug:
        traceback.print_exc()
    print(f"traintrain: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return int(exc.code or 0)
    quiet_libraries()  # before any command loads the modes, which import diffusers
    args.argv = list(sys.argv[1:] if argv is None else argv)  # --num-processes starts the same command N times
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        return _one_line_error(args, render_user_error(exc))
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise  # anything else is a bug: its traceback is the report
        return _one_line_error(
            args,
            f"{exc.strerror}: {exc.filename or 'a file'} (free disk space or fix the permissions; --debug shows where)",
        )
    except KeyboardInterrupt:
        print("traintrain: aborted; nothing saved since the last save", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
