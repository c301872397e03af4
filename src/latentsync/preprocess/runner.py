"""The data pipeline's runner: discovery, resumability, parallelism, manifests and statistics.

Layout of OUTPUT_DIR:

    <step>/...            files a step wrote (resample/, align/, sync/); shots and segments write none
    state/<step>/<id>.json  the done marker of one item at one step, written after its outputs exist
    manifest.jsonl        one line per clip that left the pipeline: passed (with its final path) or rejected
                          (step and reason), written at the end of a run
    summary.json          counts per step and reasons, hours of video in and out

Steps run in order, each over all items of the previous step (so a model-based step loads its network once
per worker and a progress bar shows each step). An item is skipped when its done marker matches the step's
parameters and the item's input fingerprint; a marker is written only after the step's outputs are complete,
and outputs are written under temporary names, so killing the run at any moment (even SIGKILL) and running it
again gives the same result as an uninterrupted run. Changing a step's parameters redoes that step, and what
follows it, for every item. Nothing is ever written into the input folder.

Executors: inline (one worker), a process pool, or Ray (tasks; model-based steps in actors that keep their
networks loaded). All give the same clips, decisions and reasons; network scores in the metrics can differ in
their last digits, because Ray runs each worker's torch with one thread, which sums in another order.
"""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
import time
import traceback
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tqdm.auto import tqdm

from ..config import PreprocessConfig, load_preprocess_config, to_dict
from ..errors import InputError, LatentSyncError
from ..fileio import atomic_write, refuse_nested_folders, remove_stale_temporaries
from ..weights import CheckpointLayout, default_checkpoints_dir
from .base import SUFFIX_SEPARATOR, Item, Step, StepContext, StepResult, params_hash, safe_relative_name

log = logging.getLogger(__name__)

STEP_NAMES = ("check", "resample", "shots", "segments", "align", "sync", "quality")
STATE_DIR = "state"
MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"


# step name -> module (in this package) and class; imported only when the step is used
STEP_CLASSES = {
    "check": ("check", "CheckStep"), "resample": ("resample", "ResampleStep"), "shots": ("shots", "ShotStep"),
    "segments": ("segments", "SegmentStep"), "align": ("align", "AlignStep"), "sync": ("sync", "SyncStep"),
    "quality": ("quality", "QualityStep"),
}


def build_steps(config: PreprocessConfig, names: Sequence[str] | None = None) -> list[Step]:
    """The steps called `names` (default: all seven), in pipeline order."""
    names = list(names) if names else list(STEP_NAMES)
    unknown = [n for n in names if n not in STEP_CLASSES]
    if unknown:
        raise LatentSyncError(f"unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEP_NAMES)}")
    steps = []
    for name in STEP_NAMES:
        if name in names:
            module, cls = STEP_CLASSES[name]
            steps.append(getattr(importlib.import_module(f"{__package__}.{module}"), cls)(config))
    return steps


def discover(input_dir: Path, extensions: Iterable[str]) -> list[Item]:
    """Every video under `input_dir` (recursively), identified by its path relative to it, sorted."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: input folder not found")
    exts = {e.lower() for e in extensions}
    paths = sorted(p for p in input_dir.rglob("*") if p.is_file() and p.suffix.lower() in exts
                   and not p.name.startswith("."))
    return [Item(id=p.relative_to(input_dir).as_posix(), path=str(p)) for p in paths]


# --------------------------------------------------------------------------------------------------------
# Running one item (in a worker process, a Ray task, or inline)
# --------------------------------------------------------------------------------------------------------

_WORKER_MODELS: dict[Any, Any] = {}  # networks loaded once per process, shared by the items it runs


@dataclass
class Outcome:
    """A step's result for one item, or the internal error it raised (then nothing is marked done)."""

    item_id: str
    result: dict | None
    seconds: float
    error: str | None = None


def run_item(step_name: str, config: dict, item: dict, output_dir: str, device: str,
             checkpoints: str | None) -> Outcome:
    """Run one step on one item. User-caused problems (an unreadable clip, ...) become rejections; other
    exceptions are reported with their traceback and the item is retried on the next run."""
    item_obj = Item.from_json(item)
    (step,) = build_steps(load_preprocess_config(config), [step_name])
    ctx = StepContext(output_dir=Path(output_dir), device=device,
                      checkpoints=Path(checkpoints) if checkpoints else None, models=_WORKER_MODELS)
    t0 = time.perf_counter()
    try:
        result = step.run(item_obj, ctx)
    except InputError as e:
        result = StepResult.reject(str(e))
    except LatentSyncError:
        raise  # the setup is wrong (weights, config): stop the run, do not reject every clip
    except Exception as e:  # noqa: BLE001 - a bug: reported, retried on the next run, not marked done
        return Outcome(item_obj.id, None, time.perf_counter() - t0,
                       f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}")
    return Outcome(item_obj.id, result.to_json(), time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------------------


class InlineExecutor:
    """Runs items one after the other in this process (workers <= 1; also what tests use)."""

    def map(self, fn: Callable[..., Outcome], calls: list[tuple], stateful: bool = False) -> Iterable[Outcome]:
        for args in calls:
            yield fn(*args)

    def close(self) -> None:
        pass


class PoolExecutor:
    """A pool of worker processes (spawned, so no thread state of this process is inherited)."""

    def __init__(self, workers: int):
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, fn, calls, stateful=False):
        futures = [self.pool.submit(fn, *args) for args in calls]
        for future in as_completed(futures):
            yield future.result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


class RayExecutor:
    """Ray tasks: `address="auto"` starts a local cluster with `workers` CPUs, otherwise joins `address`.
    Steps that load networks (`stateful`) run in long-lived actors (one per worker slot) so each loads them once."""

    def __init__(self, address: str, workers: int):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            if address == "auto":
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        self.workers = workers
        self.task = ray.remote(run_item)
        self.actor_class = ray.remote(_RayStepActor)

    def map(self, fn, calls, stateful=False):
        if not calls:
            return
        if stateful:
            actors = [self.actor_class.remote() for _ in range(min(self.workers, len(calls)))]
            refs = [actors[i % len(actors)].run.remote(*args) for i, args in enumerate(calls)]
        else:
            actors = []
            refs = [self.task.remote(*args) for args in calls]
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(done[0])
        for actor in actors:
            self.ray.kill(actor)

    def close(self) -> None:
        pass


class _RayStepActor:
    """Keeps this actor's loaded networks between items (`run_item` caches them per process)."""

    def run(self, *args) -> Outcome:
        return run_item(*args)


# --------------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------------


@dataclass
class StepStats:
    name: str
    inputs: int = 0
    outputs: int = 0
    rejected: Counter = field(default_factory=Counter)
    failed: int = 0
    done_before: int = 0
    seconds: float = 0.0


@dataclass
class Summary:
    steps: list[StepStats]
    clips_in: int
    clips_out: int
    hours_in: float
    hours_out: float
    failures: list[tuple[str, str, str]]  # (step, item id, error)

    def to_json(self) -> dict:
        return {
            "clips_in": self.clips_in, "clips_out": self.clips_out, "hours_in": self.hours_in,
            "hours_out": self.hours_out,
            "steps": [{"name": s.name, "inputs": s.inputs, "outputs": s.outputs, "rejected": dict(s.rejected),
                       "failed": s.failed, "done_before": s.done_before, "seconds": round(s.seconds, 2)}
                      for s in self.steps],
            "failures": [{"step": s, "id": i, "error": e.splitlines()[0]} for s, i, e in self.failures],
        }

    def format(self) -> str:
        lines = [f"{'step':9s} {'in':>6s} {'out':>6s} {'rejected':>8s} {'failed':>6s} {'cached':>6s}  top reasons"]
        for s in self.steps:
            reasons = "; ".join(f"{r} ({n})" for r, n in s.rejected.most_common(2))
            lines.append(f"{s.name:9s} {s.inputs:6d} {s.outputs:6d} {sum(s.rejected.values()):8d} {s.failed:6d} "
                         f"{s.done_before:6d}  {reasons}")
        lines.append(f"videos in {self.clips_in} ({_hms(self.hours_in)}) -> training clips {self.clips_out} "
                     f"({_hms(self.hours_out)})")
        return "\n".join(lines)


def _hms(hours: float) -> str:
    seconds = int(round(hours * 3600))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _reason_kind(reason: str) -> str:
    """Group rejection reasons by their first clause ("too short: 1.2 s < 2.0 s" -> "too short")."""
    return reason.split(":")[0].split(" (")[0].strip()


class Runner:
    """Runs `steps` over the videos of `input_dir`, writing into `output_dir` (see the module docstring)."""

    def __init__(self, input_dir: str | Path, output_dir: str | Path, config: PreprocessConfig | None = None,
                 steps: Sequence[str] | None = None, workers: int = 1, device: str = "cpu",
                 checkpoints: str | Path | None = None, ray: str | None = None, progress: bool = True):
        refuse_nested_folders(output_dir, input_dir)  # the output would be read as input, or the reverse
        self.input_dir, self.output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
        self.config = config or load_preprocess_config()
        self.steps = build_steps(self.config, steps)
        self.workers, self.device = workers, device
        self.checkpoints = str(Path(checkpoints).resolve()) if checkpoints else None
        self.ray, self.progress = ray, progress

    def _executor(self):
        if self.ray:
            return RayExecutor(self.ray, self.workers)
        return PoolExecutor(self.workers) if self.workers > 1 else InlineExecutor()

    def _marker_path(self, step: Step, item: Item) -> Path:
        return self.output_dir / STATE_DIR / step.name / f"{safe_relative_name(item.id)}.json"

    def _cached(self, step: Step, item: Item, phash: str) -> StepResult | None:
        path = self._marker_path(step, item)
        try:
            marker = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if marker.get("id") != item.id or marker.get("params") != phash or marker.get("input") != item.fingerprint():
            return None
        result = StepResult.from_json(marker["result"])
        if not all(Path(o.path).exists() for o in result.outputs):
            return None  # an output was deleted since: redo
        return result

    def _mark_done(self, step: Step, item: Item, phash: str, result: dict, seconds: float) -> None:
        marker = {"id": item.id, "step": step.name, "params": phash, "input": item.fingerprint(),
                  "seconds": round(seconds, 3), "result": result}
        with atomic_write(self._marker_path(step, item)) as tmp:
            tmp.write_text(json.dumps(marker, indent=1))

    def _clean_temporaries(self) -> None:
        """Remove half-written files a killed run left (they never carry a final name; `fileio`)."""
        remove_stale_temporaries(self.output_dir, recursive=True)

    def _check_weights(self) -> None:
        """Every weight file the selected steps need, before any work: one line naming all missing ones."""
        names = [n for step in self.steps for n in step.weights]
        if names:
            CheckpointLayout(self.checkpoints or default_checkpoints_dir()).require(*dict.fromkeys(names))

    def run(self) -> Summary:
        items = discover(self.input_dir, self.config.video_extensions)
        if not items:
            raise InputError(f"{self.input_dir}: no videos found ({', '.join(self.config.video_extensions)})")
        self._check_weights()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._clean_temporaries()
        config_json = to_dict(self.config)
        rejected: dict[str, tuple[str, str, dict]] = {}  # id -> (step, reason, metrics)
        stats, failures = [], []
        durations_in: dict[str, float] = {}  # source id -> its duration, from the first step that measured it
        executor = self._executor()
        try:
            for step in self.steps:
                st = StepStats(step.name, inputs=len(items))
                phash = params_hash(step.params())
                results: dict[str, StepResult] = {}
                todo = []
                for item in items:
                    cached = self._cached(step, item, phash)
                    if cached is None:
                        todo.append(item)
                    else:
                        results[item.id] = cached
                st.done_before = len(results)
                by_id = {item.id: item for item in todo}
                calls = [(step.name, config_json, item.to_json(), str(self.output_dir / step.name), self.device,
                          self.checkpoints) for item in todo]
                bar = _progress(len(items), step.name, self.progress, initial=len(results))
                for outcome in executor.map(run_item, calls, stateful=step.loads_models):
                    st.seconds += outcome.seconds
                    if outcome.error is not None:
                        st.failed += 1
                        failures.append((step.name, outcome.item_id, outcome.error))
                        log.warning("%s failed on %s: %s", step.name, outcome.item_id, outcome.error)
                    else:
                        self._mark_done(step, by_id[outcome.item_id], phash, outcome.result, outcome.seconds)
                        results[outcome.item_id] = StepResult.from_json(outcome.result)
                    if bar is not None:
                        bar.update(1)
                if bar is not None:
                    bar.close()
                next_items = []
                for item in items:  # keep discovery order, whatever order the workers finished in
                    result = results.get(item.id)
                    if result is None:
                        continue  # failed: retried next run
                    if result.rejected:
                        st.rejected[_reason_kind(result.rejected)] += 1
                        rejected[item.id] = (step.name, result.rejected, result.metrics)
                    next_items.extend(result.outputs)
                    measured = result.outputs[0].meta.get("duration_s") if result.outputs else None
                    if SUFFIX_SEPARATOR not in item.id and measured is not None:  # a whole source video
                        durations_in.setdefault(item.id, float(measured))
                st.outputs = len(next_items)
                stats.append(st)
                items = next_items
        finally:
            executor.close()
        summary = Summary(stats, clips_in=len(discover(self.input_dir, self.config.video_extensions)),
                          clips_out=len(items), hours_in=sum(durations_in.values()) / 3600,
                          hours_out=sum(_item_seconds(i) for i in items) / 3600, failures=failures)
        self._write_manifest(items, rejected)
        with atomic_write(self.output_dir / SUMMARY) as tmp:
            tmp.write_text(json.dumps(summary.to_json(), indent=2))
        return summary

    def _write_manifest(self, passed: list[Item], rejected: dict[str, tuple[str, str, dict]]) -> None:
        lines = [json.dumps({"id": i.id, "status": "passed", "path": i.path, "meta": i.meta}) for i in passed]
        lines += [json.dumps({"id": k, "status": "rejected", "step": s, "reason": r, "metrics": m})
                  for k, (s, r, m) in sorted(rejected.items())]
        with atomic_write(self.output_dir / MANIFEST) as tmp:
            tmp.write_text("\n".join(lines) + ("\n" if lines else ""))


def _item_seconds(item: Item) -> float:
    frames = item.meta.get("frames")
    if frames:
        return frames / item.meta.get("fps", 25)
    return item.duration_s or float(item.meta.get("duration_s", 0.0))


def _progress(total: int, name: str, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    return tqdm(total=total, initial=initial, desc=f"{name:9s}", unit="clip", dynamic_ncols=True)


def passed_clips(output_dir: str | Path) -> list[str]:
    """The training clips of a finished run (its manifest's passed entries), for `latentsync fileslist`."""
    path = Path(output_dir) / MANIFEST
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no manifest; run `latentsync preprocess` into this folder first") from None
    entries = [json.loads(line) for line in lines if line.strip()]
    return [e["path"] for e in entries if e["status"] == "passed"]


def rejections(output_dir: str | Path) -> dict[str, list[tuple[str, str]]]:
    """step -> [(id, reason)] of a finished run."""
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for line in (Path(output_dir) / MANIFEST).read_text().splitlines():
        if line.strip():
            e = json.loads(line)
            if e["status"] == "rejected":
                out[e["step"]].append((e["id"], e["reason"]))
    return dict(out)
