"""Optional TensorBoard scalars: each metrics.csv row mirrored to RUN/tensorboard/ (`--tensorboard`).

metrics.csv stays the record; this is a view of it. RunDir.append_metrics hands every row it writes to
`RunDir.scalar_log`, so the two never disagree. tensorboard is an optional dependency (the
`[tensorboard]` extra): without it `--tensorboard` fails before training with a one-line error.
"""
from __future__ import annotations

import math
from pathlib import Path

from .errors import DtnError
from .rundir import column_kind


class TensorBoardLog:
    """A SummaryWriter that takes metrics.csv rows: {"step": 50, "seconds": 14.6, "const": 0.12, ...}.
    Tags are "<kind>/<column>" (d_loss/d, g_loss/const, metric/fld, time/seconds): one chart group each."""

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        """purge_step: on resume, events at or after this step (written before the checkpoint we went
        back to) are dropped, as metrics.csv drops its rows after that checkpoint."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DtnError("--tensorboard needs the tensorboard package: pip install tensorboard "
                           "(or pip install -e '.[tensorboard]')") from None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def write(self, row: dict) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{column_kind(key)}/{key}", value, step)
        self.writer.flush()  # a crash or SIGTERM must not lose what metrics.csv already holds

    def close(self) -> None:
        self.writer.close()
