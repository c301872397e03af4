"""Workers that each hold one `LipSync` (the models loaded once) and run a batch's jobs one after another: local
processes (`LocalWorkers`), or Ray actors on a local or remote cluster (`RayWorkers`).

Both hand `run` the same kind of tasks and report the same outcomes, through `on_start(worker, task)` and
`on_outcome(task, outcome)`. A worker that dies mid-job (out of memory, a lost node, a kill) costs that job an
attempt: it is given to another worker (a fresh one takes the dead one's place) until `MAX_ATTEMPTS` runs have
died, and is then reported failed. A job that fails on its own (no face, an unreadable file) is not retried.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable

from ..errors import LatentSyncError
from .jobs import Job

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a job is run at most this often when workers die under it (the first run and two retries)
STOP_GRACE_S = 10.0  # how long stopping workers may take to clean up before they are killed
PARENT_CHECK_S = 0.5  # how often a worker checks that its batch is still there


@dataclass
class Task:
    index: int  # the job's place in the batch
    job: Job
    attempts: int = 0


@dataclass
class Outcome:
    ok: bool
    reason: str = ""
    frames: int = 0
    seconds: dict[str, float] | None = None
    worker: str = ""
    attempts: int = 1


def run_one(lipsync, job: Job) -> tuple[bool, str, int, dict[str, float]]:
    """Run `job` on `lipsync`: (ok, reason, frames, seconds). A user's problem is a reason; a bug is one too
    (the batch goes on), with its traceback logged."""
    t0 = time.perf_counter()
    try:
        result = lipsync.run(job.video, job.audio, job.output, job.options, progress=False)
    except LatentSyncError as e:
        return False, str(e), 0, {"total": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - one job's bug must not stop the batch; its traceback is kept
        log.error("%s: internal error\n%s", job.video, traceback.format_exc())
        return False, f"internal error: {type(e).__name__}: {e}", 0, {"total": time.perf_counter() - t0}
    return True, "", result.frames, {**result.seconds, "total": time.perf_counter() - t0}


def _worker_died(task: Task, worker: str, how: str, queue: deque, on_outcome: Callable) -> None:
    """The job of a worker that died under it goes back to the front of the queue, or after `MAX_ATTEMPTS` runs
    is reported failed."""
    died = f"{worker} died during the job ({how})"
    log.warning("%s: %s", task.job.video, died)
    if task.attempts < MAX_ATTEMPTS:
        queue.appendleft(task)
    else:
        on_outcome(task, Outcome(False, f"{died}, {task.attempts} times", worker=worker, attempts=task.attempts))


# ---- local processes ---------------------------------------------------------------------------------------


def _worker_main(model: dict[str, Any], conn) -> None:
    """A local worker: load the models, then run the jobs it is sent until told to stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the batch, which stops its workers itself

    def terminated(signum, frame):
        raise KeyboardInterrupt  # unwinds the job: its temporary output is removed

    signal.signal(signal.SIGTERM, terminated)
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True, name="latentsync-parent-watch").start()
    from ..inference import LipSync

    try:
        lipsync = LipSync(**model)
    except LatentSyncError as e:
        conn.send(("fatal", str(e)))
        return
    conn.send(("ready", os.getpid()))
    try:
        while (task := conn.recv()) is not None:
            conn.send(("outcome", run_one(lipsync, task.job)))
    except (KeyboardInterrupt, EOFError):
        pass


def _exit_with(parent: int) -> None:
    """End this worker when the batch that started it is gone (killed with -9, its jobs die with it: a rerun
    removes what they leave, temporary files of processes that no longer exist)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


class LocalWorkers:
    """`count` worker processes on this machine, worker i on `devices[i % len(devices)]`."""

    def __init__(self, model: dict[str, Any], count: int, devices: list[str]):
        self.model, self.devices = model, devices
        self.context = multiprocessing.get_context("spawn")  # no thread or CUDA state inherited
        self.started = 0
        self.workers: list[tuple[str, Any, Any]] = []  # (name, process, connection)
        try:
            for _ in range(count):
                self.workers.append(self._start())
            for worker in self.workers:
                self._wait_ready(worker)
        except BaseException:
            self.close()
            raise

    def _start(self):
        i = self.started
        self.started += 1
        model = {**self.model, "device": self.devices[i % len(self.devices)]}
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_worker_main, args=(model, child), name=f"latentsync-batch-{i}",
                                       daemon=True)
        process.start()
        child.close()
        return f"worker {i}", process, parent

    def _wait_ready(self, worker) -> None:
        name, process, conn = worker
        try:
            kind, value = conn.recv()
        except EOFError:
            raise LatentSyncError(f"{name} stopped while loading the models (exit {process.exitcode})") from None
        if kind == "fatal":
            raise LatentSyncError(value)

    def run(self, tasks: list[Task], on_start: Callable, on_outcome: Callable) -> None:
        queue = deque(tasks)
        idle = list(self.workers)
        busy: dict[Any, tuple[tuple, Task]] = {}  # connection -> (worker, task)
        while queue or busy:
            while queue and idle:
                worker, task = idle.pop(0), queue.popleft()
                task.attempts += 1
                worker[2].send(task)
                busy[worker[2]] = (worker, task)
                on_start(worker[0], task)
            ready = wait([c for c in busy] + [w[1].sentinel for w, _ in busy.values()])
            for conn, (worker, task) in list(busy.items()):
                name, process, _ = worker
                if conn not in ready and process.sentinel not in ready:
                    continue
                del busy[conn]
                message = None
                if conn in ready:
                    try:
                        message = conn.recv()
                    except EOFError:  # the pipe closed under it: the process is going
                        pass
                if message is not None:
                    ok, reason, frames, seconds = message[1]
                    idle.append(worker)
                    on_outcome(task, Outcome(ok, reason, frames, seconds, name, task.attempts))
                    continue
                process.join()
                self.workers.remove(worker)
                _worker_died(task, name, f"exit status {process.exitcode}", queue, on_outcome)
                if queue:  # a fresh worker takes its place
                    fresh = self._start()
                    self._wait_ready(fresh)
                    self.workers.append(fresh)
                    idle.append(fresh)

    def close(self) -> None:
        """Stop every worker: asked first (a job in progress removes its temporary output), then killed."""
        for _, process, conn in self.workers:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for _, process, _ in self.workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        self.workers = []


# ---- Ray ---------------------------------------------------------------------------------------------------


class _RayWorker:
    """A Ray actor holding one `LipSync`."""

    def __init__(self, model: dict[str, Any]):
        from ..inference import LipSync

        self.lipsync = LipSync(**model)

    def ready(self) -> bool:
        return True

    def run(self, job: Job):
        return run_one(self.lipsync, job)


class RayWorkers:
    """Ray actors, one per worker: `address` "auto" starts a local cluster, else joins the one at `address`.
    Each asks Ray for `gpus` GPUs (fractions share one) and runs on cuda when it has any, else on the CPU."""

    def __init__(self, model: dict[str, Any], count: int | None, address: str, gpus: float | None):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            if address == "auto":
                # Ray gives an actor OMP_NUM_THREADS = its CPUs (1) unless the variable is set, and PyTorch's CPU
                # arithmetic depends on its thread count: the local cluster's workers get this process's count,
                # so that their outputs are those of `latentsync infer`, byte for byte.
                import torch

                os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
                ray.init(num_cpus=max(count or 1, 1), include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        gpus = gpus if gpus is not None else (1.0 if cluster_gpus else 0.0)
        self.count = count or (int(cluster_gpus // gpus) if gpus else 1) or 1
        self.model = {**model, "device": "cuda" if gpus else "cpu"}
        self.actor_class = ray.remote(num_gpus=gpus, num_cpus=1, max_restarts=0)(_RayWorker)
        self.started = 0
        self.actors = [self._start() for _ in range(self.count)]
        try:  # the models load now: a missing checkpoint is one line before any job
            ray.get([actor.ready.remote() for _, actor in self.actors])
        except ray.exceptions.RayActorError as e:
            self.close()
            cause = getattr(e, "cause", None) or e
            raise LatentSyncError(f"a Ray worker could not load the models: {str(cause).strip().splitlines()[-1]}") from None

    def _start(self):
        name = f"ray worker {self.started}"
        self.started += 1
        return name, self.actor_class.remote(self.model)

    def run(self, tasks: list[Task], on_start: Callable, on_outcome: Callable) -> None:
        from ray.exceptions import RayActorError

        queue = deque(tasks)
        idle = list(self.actors)
        busy: dict[Any, tuple[tuple, Task]] = {}  # object ref -> (actor, task)
        while queue or busy:
            while queue and idle:
                actor, task = idle.pop(0), queue.popleft()
                task.attempts += 1
                busy[actor[1].run.remote(task.job)] = (actor, task)
                on_start(actor[0], task)
            (ref,), _ = self.ray.wait(list(busy), num_returns=1)
            actor, task = busy.pop(ref)
            try:
                ok, reason, frames, seconds = self.ray.get(ref)
            except RayActorError as e:
                self.actors.remove(actor)
                _worker_died(task, actor[0], type(e).__name__, queue, on_outcome)
                fresh = self._start()
                self.actors.append(fresh)
                idle.append(fresh)
                continue
            idle.append(actor)
            on_outcome(task, Outcome(ok, reason, frames, seconds, actor[0], task.attempts))

    def close(self) -> None:
        for _, actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
