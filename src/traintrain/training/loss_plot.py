"""The loss figure as a PNG: raw and averaged loss against step, the learning rate on a right axis.

Drawn with matplotlib's object API on its Agg canvas (no pyplot state, so a UI thread can draw
while another job runs) and written atomically, so a page showing the file never gets half of it.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from traintrain.errors import UserError
from traintrain.fileio import atomic_path
from traintrain.training.loss_history import LossLog, downsample

PLOT_SIZE = (1000, 500)  # pixels, width x height
DPI = 100
PLOT_POINTS = 4000  # a 1000-pixel figure shows no more; min/max per bucket keeps the spikes
RAW_LOSS_COLOR = "#9ecae1"  # thin and light: the noisy per-step loss
AVERAGE_LOSS_COLOR = "#08519c"  # bold: the average (EMA, factor 0.9) users judge a run by
LEARNING_RATE_COLOR = "#e6550d"


def loss_figure(log: LossLog, *, log_scale: bool = False, title: str = "") -> Figure:
    """The figure for `log`; an empty log (a run that just started) gets empty axes and a note."""
    log = downsample(log, PLOT_POINTS)
    figure = Figure(figsize=(PLOT_SIZE[0] / DPI, PLOT_SIZE[1] / DPI), dpi=DPI, layout="constrained")
    loss_axis = figure.add_subplot()
    loss_axis.plot(log.steps, log.loss, color=RAW_LOSS_COLOR, linewidth=0.8, label="loss")
    loss_axis.plot(log.steps, log.loss_average, color=AVERAGE_LOSS_COLOR, linewidth=2.5, label="loss (average)")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    if log_scale:
        loss_axis.set_yscale("log", nonpositive="mask")
    rate_axis = loss_axis.twinx()
    rate_axis.plot(log.steps, log.learning_rate, color=LEARNING_RATE_COLOR, linewidth=1.2, label="learning rate")
    rate_axis.set_ylabel("learning rate", color=LEARNING_RATE_COLOR)
    rate_axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    handles = loss_axis.get_lines() + rate_axis.get_lines()
    loss_axis.legend(handles=handles, labels=[str(line.get_label()) for line in handles], loc="upper right")
    if not log.steps:
        loss_axis.text(0.5, 0.5, "no steps logged yet", transform=loss_axis.transAxes, ha="center", va="center")
    figure.suptitle(title or log.run_name)
    return figure


def write_loss_plot(log: LossLog, target: Path, *, log_scale: bool = False, title: str = "") -> Path:
    """Write the figure as a PNG of PLOT_SIZE pixels; a reader sees the old file or the new one."""
    target = Path(target)
    if target.is_dir():
        raise UserError(f"{target} is a folder", "give the name of the PNG file to write")
    figure = loss_figure(log, log_scale=log_scale, title=title)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png")
    return target
