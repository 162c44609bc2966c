"""What a training run reports while it runs: plain log lines, ``OUT/log.txt`` and TensorBoard event files.

:class:`RunObserver` is what :func:`balanced_l1.experiments.run.train.train` calls after every iteration and every
validation. It never touches a tensor: the training loop hands it the Python floats it already has (the loss
row is read back from the device once per iteration, as before), so it adds no host synchronisation.

- **Plain lines.** Every ``log_every`` iterations (and at the last one) it writes one line per run: iteration,
  losses, learning rate, iterations per second and the estimated time left. The line is appended to
  ``OUT/log.txt`` always, and written to standard error too when standard error is not a terminal (a file, a
  pipe, a batch system's log), where a progress bar would fill the file with carriage returns. On a terminal
  the tqdm bars stay and only ``log.txt`` gets the lines.
- **log.txt.** Each process that trains a run appends that run's lines (with ``--jobs N``, each child process
  its own runs'; the parent process the summary). Every line is one ``os.write`` on a file descriptor opened with
  ``O_APPEND``, so lines of processes writing at once never interleave mid-line.
- **TensorBoard** (``--tensorboard``): one ``torch.utils.tensorboard.SummaryWriter`` per run under
  ``OUT/tensorboard/<arm>_seed<s>``, with ``loss/<name>``, ``lr`` and ``gradient_balance/<stage>/<statistic>``
  per iteration and ``val/<metric>`` per validation. The ``tensorboard`` package is an optional extra
  (:data:`~balanced_l1.experiments.config.checks.INSTALL_TENSORBOARD`); the settings refuse ``--tensorboard``
  without it.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from balanced_l1._files import WriteError
from balanced_l1.experiments.metric_names import METRICS


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (standard error by default) is a terminal, where progress bars are drawn."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def _write_line(stream: TextIO, text: str) -> None:
    """Write one line to ``stream`` in one ``os.write`` when it has a file descriptor (atomic on a pipe)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        stream.write(text)
        stream.flush()
        return
    stream.flush()
    os.write(fd, text.encode("utf-8", "replace"))


class LogFile:
    """``OUT/log.txt``, appended to one whole line at a time (one ``os.write`` on an ``O_APPEND`` descriptor).

    Args:
        path: the file; created if missing, never truncated.
        echo: also write each line to standard error (when it is not a terminal).
    """

    def __init__(self, path: str | os.PathLike[str], *, echo: bool = False) -> None:
        import stat

        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        self.path = Path(path)
        self.echo = echo
        fd = os.open(self.path, flags, 0o666)  # O_NONBLOCK: a FIFO put there does not hang the run
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{self.path} is not a regular file; remove it")
        os.set_blocking(fd, True)
        self._fd: int | None = fd

    def line(self, text: str) -> None:
        """Append ``text`` (one line; a newline inside is replaced by a space) with the time in front."""
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        data = f"{stamp} {' '.join(text.splitlines())}\n"
        if self._fd is not None:
            os.write(self._fd, data.encode("utf-8", "replace"))
        if self.echo:
            _write_line(sys.stderr, data)

    def close(self) -> None:
        """Close the file (further lines go to standard error only, if echoed)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LogFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def format_progress(label: str, done: int, total: int, record: dict[str, float], lr: float, rate: float | None) -> str:
    """One progress line: ``[label] iter done/total loss ... lr ... it/s ... eta h:mm:ss``.

    Example:
        >>> format_progress("a seed 0", 50, 100, {"loss": 1.5, "loss_box_reg": 0.25}, 0.04, 2.0)
        '[a seed 0] iter 50/100 loss 1.5000 loss_box_reg 0.2500 lr 0.04 2.00 it/s eta 0:00:25'
    """
    losses = " ".join(f"{name} {value:.4f}" for name, value in record.items() if not name.startswith("val_"))
    speed = "" if rate is None else f" {rate:.2f} it/s eta {_duration((total - done) / rate) if rate > 0 else '?'}"
    return f"[{label}] iter {done}/{total} {losses} lr {lr:.4g}{speed}"


def format_metrics(metrics: dict[str, Any]) -> str:
    """COCO's six metrics in percent, ``n/a`` where pycocotools gives -1.

    Example:
        >>> format_metrics({"AP": 0.5, "AP50": 0.75, "AP75": 0.25, "APs": -1.0, "APm": 0.5, "APl": 0.5})
        'AP 50.0 AP50 75.0 AP75 25.0 APs n/a APm 50.0 APl 50.0'
    """
    return " ".join(f"{name} {100 * metrics[name]:.1f}" if metrics[name] >= 0 else f"{name} n/a" for name in METRICS)


class RunObserver:
    """Reports one training run: plain lines every ``log_every`` iterations, and TensorBoard scalars if asked.

    Args:
        label: the run's name in its lines, e.g. ``"balanced_l1 seed 0"``.
        log: where the lines go (``OUT/log.txt``, echoed to standard error when it is not a terminal); the
            observer closes it in :meth:`end` or :meth:`close`.
        log_every: iterations between lines.
        tensorboard: the run's event-file folder, or ``None`` for no TensorBoard.
        bars: whether the run draws a tqdm bar (standard error is a terminal).
    """

    def __init__(
        self, label: str, log: LogFile, log_every: int, *, tensorboard: Path | None = None, bars: bool = True
    ) -> None:
        self.label = label
        self.log = log
        self.log_every = log_every
        self.tensorboard = tensorboard
        self.bars = bars
        self.writer: Any = None
        self._mark: tuple[int, float] = (0, 0.0)
        self.total = 0

    def begin(self, start: int, total: int) -> None:
        """The run starts (or resumes) at iteration ``start`` of ``total``."""
        self.total = total
        self._mark = (start, time.perf_counter())
        if self.tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run drops the events a killed one wrote after its last checkpoint
            try:
                self.writer = SummaryWriter(str(self.tensorboard), purge_step=start + 1 if start else None)
            except OSError as err:  # a read-only or full OUT/tensorboard
                raise WriteError(
                    f"{self.tensorboard}: cannot write TensorBoard events there ({err.strerror or err})"
                ) from None
        self.log.line(f"[{self.label}] {'resumed at' if start else 'started:'} iter {start}/{total}")

    def iteration(
        self, done: int, record: dict[str, float], lr: float, balance: dict[str, dict[str, float | None]] | None
    ) -> None:
        """Iteration ``done`` (1-based) finished with the loss row ``record`` at learning rate ``lr``."""
        if self.writer is not None:
            for name, value in record.items():
                self.writer.add_scalar(f"loss/{name}", value, done)
            self.writer.add_scalar("lr", lr, done)
            for stage, stats in (balance or {}).items():
                for statistic, measured in stats.items():
                    if measured is not None:
                        self.writer.add_scalar(f"gradient_balance/{stage}/{statistic}", measured, done)
        if done % self.log_every == 0 or done == self.total:
            start, then = self._mark
            now = time.perf_counter()
            rate = (done - start) / (now - then) if now > then and done > start else None
            self._mark = (done, now)
            self.log.line(format_progress(self.label, done, self.total, record, lr, rate))

    def validation(self, done: int, metrics: dict[str, Any]) -> None:
        """The held-out split was scored after iteration ``done``."""
        if self.writer is not None:
            for name in METRICS:
                self.writer.add_scalar(f"val/{name}", metrics[name], done)
        self.log.line(
            f"[{self.label}] validation at iter {done}: {format_metrics(metrics)}"
        )  # its time counts in the next rate

    def end(self, metrics: dict[str, Any] | None = None) -> None:
        """The run ended (``metrics``: its final evaluation)."""
        if metrics is not None:
            self.log.line(f"[{self.label}] finished: {format_metrics(metrics)}")
        self.close()

    def close(self) -> None:
        """Flush and close the event file, and close the log file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.log.close()
