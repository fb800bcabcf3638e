"""The Ray executor: one model actor per GPU, or per node of a CPU cluster, each finishing its shards.

    executor = RayExecutor(address=None, workers=None)     # a local Ray unless an address is given
    for event in executor.run(context, tasks):
        ...   # int (images done, negative to take back a lost attempt's) or ShardResult

Each actor is a jobs.worker.ShardWorker pinned to one node. It holds several shards at once (one in the
model, the next decoding ahead, the others being finished: jobs.worker.IN_FLIGHT) and writes every
shard's files itself, on its own node; the driver only hands out shards, commits markers and merges the
top-k lists it gets back. The actors need nothing else from the cluster (decoding and encoding run in
their own threads), so a node with one CPU runs its actor and nothing waits for a task that can never be
scheduled.

Resources: on a GPU cluster one actor per GPU (num_gpus=1 and its share of the node's CPUs); on a CPU
cluster one actor per node (or `workers` spread over the nodes), reserving one CPU and running torch on
the node's cores. A node with no CPU (a KubeRay head started with num-cpus 0) gets no actor. When no
node can host an actor, the job stops at once and says so; when actors wait for resources other jobs
hold, it says so after a few seconds and keeps waiting.

Failures: an actor that dies (a crashed decoder, a lost node) is restarted by Ray where its node still
exists; its shards go back to the queue (another actor may take them) and their progress is taken back.
A shard attempt that a transient failure ended (a ShardFailure from the worker) goes back to the queue
too, for another actor where there is one. A shard that fails MAX_SHARD_ATTEMPTS times, or an exception
raised by the worker's code, stops the job.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from actindex.jobs.tasks import MAX_SHARD_ATTEMPTS, Attempts, TaskQueue
from actindex.jobs.worker import (
    IN_FLIGHT,
    ModelPlan,
    ShardFailure,
    ShardResult,
    ShardTask,
    ShardWorker,
    WorkContext,
    check_weights,
    plan_model,
)
from actindex.pipeline.errors import InvalidInputError, UserError

log = logging.getLogger("actindex")
WAIT_WARNING_S = 10.0  # say that actors wait for resources after this long without one ready


class ClusterError(UserError):
    """The cluster cannot run the job as it is (no node for an actor, every actor lost)."""


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    # RAY_BACKEND_LOG_LEVEL is left alone: setting it makes Ray's C++ core print a line saying so.
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:  # a local throwaway Ray: no token (Ray 2.60 would otherwise write ~/.ray/auth_token)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    logging.getLogger("ray._private.worker").addFilter(_NotMainThread())
    options = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if not address:  # "local": a new Ray of its own, even where a `ray start` cluster runs on this machine
        ray.init(address="local", **options)
        return
    # Joining a cluster: Ray's C++ client logs each refused attempt (a wrong token: one line a second for
    # 20 s) to fd 2. Kept aside while connecting, and written out unless the failure is explained below.
    with tempfile.TemporaryFile() as aside:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(aside.fileno(), 2)
        try:
            ray.init(address=address, **options)
            error = None
        except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
            error = exc
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        aside.seek(0)
        logged = aside.read().decode(errors="replace")
    if error is None:
        sys.stderr.write(logged)
        return
    reason = " ".join(str(error).split())[:300]
    if "InvalidAuthToken" in logged:
        reason = "it refused this process's auth token (InvalidAuthToken)"
    raise ClusterError(
        f"could not join the Ray cluster at {address}: {reason}; if the cluster uses token auth, set "
        "RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) here as on its nodes"
    ) from None


class _NotMainThread(logging.Filter):
    """Ray warns that it sets no SIGTERM handler when started outside the main thread (RayExecutor starts it
    in the background); a SIGTERM then ends the driver, and Ray's processes with it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "current thread is not the main thread" not in record.getMessage()


@dataclass(frozen=True)
class ActorSlot:
    """Where one model actor goes and what it reserves."""

    node_id: str
    host: str
    num_cpus: float
    num_gpus: int
    threads: int  # torch threads (the node's cores shared by its actors)

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus else "cpu"


def plan_actors(nodes: list[dict], device: str, workers: int | None) -> list[ActorSlot]:
    """Actor slots for the alive `nodes` (as ray.nodes() lists them): one per GPU for cuda, else one per
    node with a CPU (or `workers` spread round-robin over those nodes)."""
    usable = []
    for node in nodes:
        resources = node.get("Resources", {})
        cpus, gpus = resources.get("CPU", 0), int(resources.get("GPU", 0))
        if node.get("Alive") and (gpus if device == "cuda" else cpus >= 1):
            usable.append((node, cpus, gpus))
    if not usable:
        return []
    counts = Counter()
    if device == "cuda":
        for node, _, gpus in usable:
            counts[node["NodeID"]] = gpus
        if workers:
            counts = _spread(workers, [node["NodeID"] for node, _, _ in usable], cap=dict(counts))
    else:
        counts = _spread(workers or len(usable), [node["NodeID"] for node, _, _ in usable])
    slots = []
    for node, cpus, _ in usable:
        count = counts[node["NodeID"]]
        for _ in range(count):
            share = min(1.0, cpus / count) if cpus else 0.0
            threads = max(1, int(cpus) // count)
            slots.append(
                ActorSlot(
                    node["NodeID"],
                    node.get("NodeManagerHostname", "?"),
                    share,
                    int(device == "cuda"),
                    threads,
                )
            )
    return slots


def _spread(count: int, node_ids: list[str], cap: dict | None = None) -> Counter:
    counts: Counter = Counter()
    placed, i = 0, 0
    while placed < count and (cap is None or sum(cap.values()) > placed):
        node = node_ids[i % len(node_ids)]
        if cap is None or counts[node] < cap[node]:
            counts[node] += 1
            placed += 1
        i += 1
    return counts


class _ShardActor:
    """The Ray actor around a ShardWorker. `warm()` imports torch and torchvision as soon as the actor
    exists; the first actor also `plan`s the model for the driver (and keeps it). The worker is built by
    the first `ready(context)` or `run_shard(context, task)`, so a failure to load the model comes back as
    the worker's own exception, and an actor Ray restarts builds it again on its next call."""

    def __init__(self, threads: int, node: str):
        # Ray sets OMP_NUM_THREADS to the CPUs the actor reserved (1). torch's threads pick their count
        # when they first run an op, from the global setting: set it before any thread touches torch.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)
        self.threads, self.node = threads, node
        self.worker: ShardWorker | None = None  # or another context's worker (jobs.tasks.TaskContext)
        self.loaded = None  # (weights sha256, module) that plan() loaded, for the worker
        self.lock = threading.Lock()

    def warm(self) -> None:
        # The slow imports, done before the work arrives; under the lock, since plan() imports them too, and
        # two threads importing torchvision for the first time can see it half initialized.
        with self.lock:
            import torchvision.models  # noqa: F401

    def plan(self, request, geometry: bool) -> ModelPlan:
        with self.lock:
            plan, module = plan_model(request, geometry)
            self.loaded = (plan.weights_sha256, module)
        return plan

    def ready(self, context: WorkContext) -> dict:
        with self.lock:
            if self.worker is None:
                module = None
                if self.loaded is not None:
                    sha256, module = self.loaded
                    check_weights(sha256, context.spec)  # this node may have other files than the first
                    self.loaded = None
                self.worker = context.worker(threads=self.threads, node=self.node, module=module)
        return {**self.worker.writer, "threads": self.threads}

    def run_shard(self, context: WorkContext, task: ShardTask):
        self.ready(context)
        yield from self.worker.run_shard(task)


class RayExecutor:
    """Starts Ray and the actors in a background thread as soon as it is made, so that they come up while
    the driver reads the index; `plan()`, `gpus()` and `run()` wait for them."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, device=None):
        self.workers = workers
        self.device = getattr(device, "value", device) or "auto"
        self.actors: list = []
        self.slots: list[ActorSlot] = []
        self.has_gpus = False
        self._error: BaseException | None = None
        self._started = threading.Event()
        threading.Thread(target=self._start, args=(address,), name="actindex-ray", daemon=True).start()

    def _start(self, address: str | None) -> None:
        try:
            init_ray(address)
            import ray

            self.has_gpus = ray.cluster_resources().get("GPU", 0) > 0
            device = "cuda" if self.device == "cuda" or (self.device == "auto" and self.has_gpus) else "cpu"
            if device == "cuda" and not self.has_gpus:
                self._error = InvalidInputError("--device cuda, but no node of the Ray cluster has a GPU")
                return
            self.slots = plan_actors(ray.nodes(), device, self.workers)
            if not self.slots:
                self._error = ClusterError(_no_node_message(ray.nodes(), device))
                return
            self.actors = [_start_actor(slot) for slot in self.slots]
            for actor in self.actors:
                actor.warm.remote()
        except BaseException as exc:  # noqa: BLE001 - raised in the driver's thread by _wait()
            self._error = exc
        finally:
            self._started.set()
        # Ray's processes are started with PR_SET_PDEATHSIG: they die with the thread that started them,
        # so this one stays (parked) until the process ends
        threading.Event().wait()

    def _wait(self) -> None:
        self._started.wait()
        if self._error is not None:
            raise self._error

    def gpus(self) -> bool:
        self._wait()
        return self.has_gpus

    def cores(self) -> int:
        self._wait()
        return max((slot.threads for slot in self.slots), default=1)

    def plan(self, request, geometry: bool = True) -> ModelPlan:
        """The model as the first actor to load it found it (every actor loads it now, for its worker; the
        driver only built it without weights, on the meta device, to check names: indexing.check_model)."""
        import ray
        from ray.exceptions import RayTaskError

        self._wait()
        pending = {actor.plan.remote(request, geometry): actor for actor in self.actors}
        patience = _Patience()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if not ready:
                patience.check({actor: self.slots[self.actors.index(actor)] for actor in pending.values()})
                continue
            pending.pop(ready[0])
            try:
                return ray.get(ready[0])
            except RayTaskError as exc:
                raise _cause(exc) from None
            except _lost_actor_errors() as exc:
                log.warning("a model actor was lost while loading the model (%s)", _first_line(exc))
        raise ClusterError("no model actor could load the model; see the Ray logs (ray logs)")

    def run(self, context: WorkContext, tasks: Iterable[ShardTask]) -> Iterator[int | ShardResult]:
        import ray

        self._wait()
        if not self.actors:
            raise ClusterError(_no_node_message(ray.nodes(), context.spec.device))
        yield from _Scheduler(self.actors, tasks, self.slots, ray.put(context)).run()

    def close(self) -> None:
        import ray

        self._started.wait()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def _start_actor(slot: ActorSlot):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return (
        ray.remote(_ShardActor)
        .options(
            num_cpus=slot.num_cpus,
            num_gpus=slot.num_gpus,
            max_concurrency=IN_FLIGHT[slot.device] + 1,  # + the plan/ready calls
            max_restarts=MAX_SHARD_ATTEMPTS,
            max_task_retries=0,  # the scheduler retries shards itself, on any actor
            scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node_id, soft=False),
        )
        .remote(slot.threads, slot.node_id)
    )


class _Scheduler:
    """Hands shards to actors (IN_FLIGHT each), streams their events, and requeues the shards of actors that
    die."""

    def __init__(self, actors: list, tasks: Iterable[ShardTask], slots: list[ActorSlot], context):
        import ray

        self.context = context  # an ObjectRef: each node fetches it once
        self.queue = TaskQueue(tasks)
        self.slots = dict(zip(actors, slots, strict=True))
        self.load: Counter = Counter()
        self.alive: list = []
        self.starting = {actor.ready.remote(context): actor for actor in actors}  # ping -> actor
        self.inflight: dict = {}  # generator -> [actor, task, images reported]
        self.attempts = Attempts()
        self.avoid: dict[int, object] = {}  # shard -> the actor its last attempt failed on
        self.patience = _Patience()
        self._ray = ray

    def run(self) -> Iterator[int | ShardResult]:
        ray = self._ray
        while self.queue or self.inflight:
            self._assign()
            if not self.inflight and not self.starting:
                raise ClusterError("every model actor was lost; see the Ray logs (ray logs) for why")
            waitables = list(self.inflight) + list(self.starting)
            ready, _ = ray.wait(waitables, num_returns=1, timeout=1.0)
            if not ready:
                if not self.alive:
                    self.patience.check({actor: self.slots[actor] for actor in self.starting.values()})
                continue
            for item in ready:
                if item in self.starting:
                    self._started(item)
                else:
                    yield from self._advance(item)

    def _assign(self) -> None:
        for actor in self.alive:
            while self.queue and self.load[actor] < IN_FLIGHT[self.slots[actor].device]:
                if self.avoid.get(self.queue.peek().shard) is actor and len(self.alive) > 1:
                    break  # a shard that failed on this actor goes to another one
                task = self.queue.popleft()
                generator = actor.run_shard.options(num_returns="streaming").remote(self.context, task)
                self.inflight[generator] = [actor, task, 0]
                self.load[actor] += 1

    def _started(self, ping) -> None:
        from ray.exceptions import ActorUnavailableError, RayTaskError

        actor = self.starting.pop(ping)
        try:
            self._ray.get(ping)
        except RayTaskError as exc:  # the worker could not be built: the model, its weights, ...
            raise _cause(exc) from None
        except ActorUnavailableError:  # restarting: ask again, shortly
            time.sleep(0.2)
            self.starting[actor.ready.remote(self.context)] = actor
            return
        except _lost_actor_errors() as exc:  # gone for good (its node left the cluster, too many restarts)
            log.warning("a model actor on %s is lost: %s", self.slots[actor].host, _first_line(exc))
            return
        self.alive.append(actor)
        self.patience.progressed()

    def _advance(self, generator) -> Iterator[int | ShardResult]:
        from ray.exceptions import RayTaskError

        actor, task, reported = self.inflight[generator]
        try:
            value = self._ray.get(next(generator))
        except StopIteration:
            self._release(generator)
            return
        except RayTaskError as exc:
            raise _cause(exc) from None
        except _lost_actor_errors() as exc:
            yield -reported
            self._lost(generator, exc)
            return
        if isinstance(value, int):
            self.inflight[generator][2] += value
        if isinstance(value, ShardFailure):
            self.attempts.fail(task.shard, value.error)
            log.warning(
                "shard %d: an attempt on %s failed (%s); retrying it",
                task.shard,
                self.slots[actor].host,
                value.error,
            )
            self.avoid[task.shard] = actor
            self.queue.appendleft(task)
            yield -reported
        self.patience.progressed()
        yield value

    def _release(self, generator) -> None:
        actor, _, _ = self.inflight.pop(generator)
        self.load[actor] -= 1

    def _lost(self, generator, exc: Exception) -> None:
        """The actor running `generator` died: its shard goes back to the queue, the actor is asked
        whether it came back."""
        actor, task, _ = self.inflight[generator]
        self._release(generator)
        self.attempts.fail(task.shard, f"its worker died: {_first_line(exc)}")
        log.warning(
            "shard %d: its worker on %s died (%s); retrying it",
            task.shard,
            self.slots[actor].host,
            _first_line(exc),
        )
        self.queue.appendleft(task)
        if actor in self.alive:
            self.alive.remove(actor)
            self.starting[actor.ready.remote(self.context)] = actor


class _Patience:
    """Says once, WAIT_WARNING_S after the last progress, that model actors wait for resources, when they
    really do: an actor Ray has given a process is starting (importing torch, loading the model), not
    waiting, however long that takes."""

    def __init__(self):
        self.since, self.warned = time.monotonic(), False

    def progressed(self) -> None:
        self.since = time.monotonic()

    def check(self, actors: dict) -> None:
        """`actors`: {actor handle: its ActorSlot} of the actors not ready yet."""
        if self.warned or not actors or time.monotonic() - self.since < WAIT_WARNING_S:
            return
        waiting = [slot for actor, slot in actors.items() if not _has_process(actor)]
        if not waiting:
            return
        import ray

        self.warned = True
        need = Counter(
            f"{slot.host}: {slot.num_cpus:g} CPU" + (f", {slot.num_gpus} GPU" if slot.num_gpus else "")
            for slot in waiting
        )
        free = ray.available_resources()
        log.warning(
            "waiting for %d model actors to start (%s); the cluster has %g CPUs and %g GPUs free: other jobs "
            "may hold them (see `ray status`); free them or add nodes",
            len(waiting),
            "; ".join(f"{count} x {what}" for what, count in need.items()),
            free.get("CPU", 0),
            free.get("GPU", 0),
        )


def _has_process(actor) -> bool:
    """Whether Ray has placed `actor` (it has a worker process, its constructor runs or ran), from the GCS's
    actor table: an actor waiting for resources has none. When the table cannot be read, it has not."""
    from ray._private.state import actors as actor_table  # the GCS's table; the state API needs a dashboard

    try:
        return bool(actor_table(actor_id=actor._actor_id.hex()).get("Pid"))
    except Exception:  # noqa: BLE001 - an unknown answer: say that it waits, as before this check existed
        return False


def _lost_actor_errors() -> tuple[type[Exception], ...]:
    """What Ray raises for a call to an actor that died or can never be placed again (its node left)."""
    from ray.exceptions import ActorUnschedulableError, RayActorError

    return (RayActorError, ActorUnschedulableError)


def _cause(exc) -> BaseException:
    """The exception the worker's code raised, without Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _no_node_message(nodes: list[dict], device: str) -> str:
    alive = [n for n in nodes if n.get("Alive")]
    described = ", ".join(
        f"{n.get('NodeManagerHostname', '?')} ({n.get('Resources', {}).get('CPU', 0):g} CPUs, "
        f"{n.get('Resources', {}).get('GPU', 0):g} GPUs)"
        for n in alive
    )
    need = "a GPU" if device == "cuda" else "at least one CPU"
    return (
        f"no node of the Ray cluster can run a model actor: each needs {need}, and the cluster has "
        f"{described or 'no alive node'}; add a node (ray start --address=HEAD:6379 --num-cpus=N"
        + (" --num-gpus=N" if device == "cuda" else "")
        + ")"
        + (" or run with --device cpu" if device == "cuda" else "")
    )
