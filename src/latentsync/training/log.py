"""Training logs: the console, `metrics.jsonl` (one line per logged step, resumable: a resumed run appends and
drops the lines past its restart step), PNG charts per metric, and TensorBoard when it is installed."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

from ..errors import InputError
from ..fileio import atomic_write, remove_stale_temporaries

log = logging.getLogger("latentsync.train")

METRICS = "metrics.jsonl"
CHARTS = "charts"


class MetricsLog:
    """Writes only on the main rank (`enabled`)."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int | None = None):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.path = self.run_dir / METRICS
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temporaries(self.run_dir, recursive=True)  # states, exports, charts
        if removed:
            log.warning("%s: removed %d half-written file(s) that a stopped run left", self.run_dir, removed)
        if self.path.exists():
            records, torn = self._read()
            if torn:
                log.warning("%s: dropped its last line, cut off when the run was stopped", self.path)
            # A resumed run redoes the steps after its state: their old lines would be duplicates.
            kept = [r for r in records if resume_step is None or r["step"] <= resume_step]
            if torn or len(kept) < len(records):
                with atomic_write(self.path) as tmp:
                    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        except Exception:  # noqa: BLE001 - TensorBoard is optional
            self._tb = None

    def log(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, float(v), step)
        log.info("step %d  %s", step, "  ".join(f"{k} {float(v):.4g}" for k, v in values.items()))

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return self._read()[0]

    def _read(self) -> tuple[list[dict], bool]:
        """The records, and whether the last line was torn (a kill during its append; it is left out). A bad
        line elsewhere is not ours to guess at: InputError naming the file and line."""
        lines = self.path.read_text().splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines):
                    return records, True
                raise InputError(f"{self.path}: line {number} is not a JSON record; remove it or "
                                 "start a new run folder") from None
        return records, False

    def charts(self) -> list[Path]:
        """One PNG per metric (value against step), replaced each time; returns their paths."""
        if not self.enabled:
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for record in self.records():
            for k, v in record.items():
                if k != "step":
                    series[k].append((record["step"], v))
        folder = self.run_dir / CHARTS
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, points in series.items():
            fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
            ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
            ax.set_xlabel("step")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = folder / f"{name.replace('/', '_')}.png"
            with atomic_write(path, suffix=".png") as tmp:
                fig.savefig(tmp, format="png")
            plt.close(fig)
            paths.append(path)
        return paths

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
