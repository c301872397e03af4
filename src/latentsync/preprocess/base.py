"""The contract between the data pipeline's steps and its runner.

A step is a function of one item: it reads the item's file (or a time range of it), writes zero or more output
files, and returns a `StepResult` whose `outputs` are the items of the next step (several for a step that splits
a video into shots), or a rejection with its reason. Steps never decide what has been done already, never touch
other items and never write outside the folder they are given: the runner owns discovery, ordering, done
markers, manifests, parallelism and statistics (datatrove's split of responsibilities).

Identity: an item's `id` is the path of its source video relative to the input folder, plus one `#`-separated
suffix per step that split it (`speaker1/interview.mp4#shot002#seg01`). Two videos with the same name in
different folders never collide (VoxCeleb2-style trees have thousands of `00001.mp4`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..devices import resolve_device
from ..weights import CheckpointLayout, default_checkpoints_dir

if TYPE_CHECKING:
    from ..config import PreprocessConfig

SUFFIX_SEPARATOR = "#"


@dataclass(frozen=True)
class Item:
    """One clip on its way through the pipeline.

    `path` is the file to read. `start_s`/`end_s` (seconds) select a stretch of it when a step split a video
    without re-encoding it (shots and segments are time ranges until the alignment step writes the clip).
    `meta` carries facts earlier steps measured (fps, duration, sync offset, ...), JSON-serialisable.
    """

    id: str
    path: str
    start_s: float = 0.0
    end_s: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.start_s

    def child(self, suffix: str, **changes: Any) -> "Item":
        """An item derived from this one: id + `#suffix`, other fields replaced by `changes`."""
        data = asdict(self) | changes
        data["id"] = f"{self.id}{SUFFIX_SEPARATOR}{suffix}"
        return Item(**data)

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(data: dict) -> "Item":
        return Item(**data)

    def fingerprint(self) -> str:
        """Identifies the input a step saw: what it reads and where (the file's size and mtime stand for its
        content, so a replaced input file counts as a new input)."""
        stat = Path(self.path).stat() if Path(self.path).exists() else None
        blob = json.dumps([self.to_json(), [stat.st_size, stat.st_mtime_ns] if stat else None], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StepResult:
    """What a step made of one item: the next step's items, or a rejection (with its reason), and metrics."""

    outputs: list[Item] = field(default_factory=list)
    rejected: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def reject(reason: str, **metrics: Any) -> "StepResult":
        return StepResult(outputs=[], rejected=reason, metrics=metrics)

    def to_json(self) -> dict:
        return {"outputs": [o.to_json() for o in self.outputs], "rejected": self.rejected, "metrics": self.metrics}

    @staticmethod
    def from_json(data: dict) -> "StepResult":
        return StepResult([Item.from_json(o) for o in data["outputs"]], data["rejected"], data["metrics"])


@dataclass
class StepContext:
    """What the runner gives a step for one item.

    `output_dir`: this step's folder under the output root; write files only through `output_path` (and
    `latentsync.fileio.atomic_write`, so a killed run never leaves a half-written file under its final name).
    `device`: where model-based steps run. `models`: a per-process cache for loaded networks, filled through
    `model()` / `load_weights()` so a step loads its network once per worker. `checkpoints`: the weights folder.
    """

    output_dir: Path
    device: str = "cpu"
    checkpoints: Path | None = None
    models: dict[str, Any] = field(default_factory=dict)

    def output_path(self, item: Item, suffix: str = ".mp4") -> Path:
        """Where this step writes the file for `item`: the item's id made into a relative path."""
        return self.output_dir / f"{safe_relative_name(item.id)}{suffix}"

    def model(self, key: tuple, load: Callable[[], Any]) -> Any:
        """The object cached under `key` for this process, made by `load()` the first time."""
        if key not in self.models:
            self.models[key] = load()  # not setdefault: a failed load caches nothing
        return self.models[key]

    def load_weights(self, name: str, load: Callable[..., Any]) -> Any:
        """The network in the checkpoints folder's file `name` (a `weights.FILES` entry), loaded once per
        process and device by `load(path, device=...)`; CheckpointError naming the file if it is missing."""
        layout = CheckpointLayout(self.checkpoints if self.checkpoints is not None else default_checkpoints_dir())
        device = resolve_device(self.device)
        path = getattr(layout, name)
        return self.model((name, str(path.absolute()), str(device)),
                          lambda: load(layout.require(name)[0], device=device))


class Step:
    """A pipeline step. `params()` returns everything that changes its outputs (thresholds, resolution, and a
    `version` bumped when the code changes them): a done marker whose parameters differ is redone.

    `weights`: the checkpoint files (`weights.FILES` names) the step needs; the runner checks them all before
    any work. `loads_models`: the step keeps networks in `ctx.models`, so executors that can (Ray) run it in
    long-lived workers that load them once.
    """

    name: str
    weights: tuple[str, ...] = ()
    loads_models: bool = False

    def __init__(self, config: "PreprocessConfig"):
        self.config = config

    def params(self) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, item: Item, ctx: StepContext) -> StepResult:
        raise NotImplementedError


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


_UNSAFE = re.compile(r"[^\w.\-/]+")


def safe_relative_name(item_id: str) -> str:
    """A relative file name for an id: `#` suffixes become `__`, odd characters `_`, no `..` or empty
    components ("a/b.mp4#shot002" -> "a/b.mp4__shot002"; the source's extension stays, so a.mp4 and a.mov
    remain two names)."""
    name = "__".join(item_id.split(SUFFIX_SEPARATOR))
    parts = [p for p in _UNSAFE.sub("_", name).split("/") if p not in ("", ".", "..")]
    return "/".join(parts)
