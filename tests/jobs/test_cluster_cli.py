"""The cluster recipe of docs/clusters.md ("On a cluster"), run as written: a head and a second node started
with `ray start` (token auth, as Ray 2.60 wants it), the job submitted with
`ray job submit --working-dir . -- python -m actindex index ...`, its log read back with `ray job logs`,
and the index it wrote compared with `--executor local`'s.

The commands come from that page's code block. The test fills in its placeholders (HEAD, SECRET, PHOTOS/,
/shared/idx/, JOB_ID, the default ports, and DEFAULT, the pretrained weights: see `recipe_weights`) and
appends only what running both nodes on one machine needs (their own ports, one temp dir, two CPUs each,
`--block` to keep each node in a session of its own) and, to the job, `--resize 64 --crop 64 --shard-size 2`
so that 14 small images make 7 quick shards. A node plugin (tests/node_plugin) holds each worker's first
write until both nodes' actors have shards, so both nodes write some whichever actor starts first.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torchvision

from actindex.pipeline.layout import IndexLayout
from tests.jobs.test_cli import invoke
from tests.ports import free_ports
from tests.tables import assert_same_tables

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[2]
RECIPE = REPO / "docs" / "clusters.md"
NODE_PLUGIN = REPO / "tests" / "node_plugin"
TEST_SIZE = ["--resize", "64", "--crop", "64", "--shard-size", "2"]
CPUS = 2  # per node; the local run uses as many torch threads, so both give the same bits
WAIT_S = 180  # for a node or the cluster to come up (a bound for failures, not a timing assertion)
# A driver's tries to join (one a second; Ray's default is 20): each is refused the same way, so two
# give the same one-line error as twenty, 18 s sooner.
REFUSED_TRIES = "2"


def recipe_commands() -> list[list[str]]:
    """The lines of the bash block of the "On a cluster" section (docs/clusters.md), as argument lists."""
    section = RECIPE.read_text().split("## On a cluster\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "docs/clusters.md: no bash block in 'On a cluster'"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]


def command(commands: list[list[str]], *prefix: str) -> list[str]:
    found = [args for args in commands if args[: len(prefix)] == list(prefix)]
    assert found, f"docs/clusters.md: no `{' '.join(prefix)} ...` line in the cluster recipe"
    return found[0]


def fill(args: list[str], values: dict[str, str]) -> list[str]:
    """Each placeholder (a word, like HEAD or 6379) replaced by its value."""
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(key)}(?!\w)" for key in values))
    return [pattern.sub(lambda m: values[m.group(0)], arg) for arg in args]


NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)
# what `ray start` says when a port it was given (or chose) is taken: the start is tried again, with new ports
PORT_CLASH = re.compile(r"trying to use a port number|address already in use|failed to bind", re.IGNORECASE)
START_TRIES = 3


class PortClash(Exception):
    """A node did not start because one of its ports was taken."""


def node_options(temp_dir: str, ports: list[int]) -> list[str]:
    """What a second node on the same machine needs: its own ports, the cluster's temp dir."""
    return [f"--{name}={port}" for name, port in zip(NODE_PORTS, ports, strict=True)] + [
        "--min-worker-port=0",  # any free port
        "--max-worker-port=0",
        f"--num-cpus={CPUS}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        "--block",
    ]


def _proc_table() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, session) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (fields[0], int(fields[1]), int(fields[3]))
    return table


class LocalCluster:
    """Ray nodes started with `ray start --block`, each in a session of its own; `stop()` kills every
    session they and their descendants (Ray's job drivers start their own) run in, and returns the pids
    still alive after that (none, or the test fails)."""

    def __init__(self, temp_dir: str, env: dict[str, str]):
        self.temp_dir, self.env = temp_dir, env
        self.nodes: list[subprocess.Popen] = []

    def start(self, args: list[str]) -> None:
        log_path = Path(self.temp_dir) / f"node-{len(self.nodes)}.log"
        with open(log_path, "w") as log:
            node = subprocess.Popen(
                args, env=self.env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
            )
        self.nodes.append(node)
        deadline = time.monotonic() + WAIT_S
        while "Ray runtime started" not in log_path.read_text():
            if node.poll() is not None and PORT_CLASH.search(log_path.read_text()):
                raise PortClash(log_path.read_text()[-1000:])
            assert node.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)

    def sessions(self) -> set[int]:
        table = _proc_table()
        ours = {node.pid for node in self.nodes}
        while True:  # every descendant of the nodes, whatever session it made for itself
            more = {pid for pid, (_, ppid, _) in table.items() if ppid in ours} - ours
            if not more:
                break
            ours |= more
        return {node.pid for node in self.nodes} | {table[pid][2] for pid in ours if pid in table}

    def stop(self) -> list[int]:
        sessions = self.sessions()
        for node in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)  # `ray start` stops its node's processes
        graceful = time.monotonic() + 5  # for all nodes together: they stop at the same time
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=max(0.0, graceful - time.monotonic()))
        deadline = time.monotonic() + 30
        while (left := self._alive(sessions)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=5)
        return self._alive(sessions)

    @staticmethod
    def _alive(sessions: set[int]) -> list[int]:
        return [pid for pid, (state, _, sid) in _proc_table().items() if sid in sessions and state != "Z"]


def ray_cli(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, cwd=REPO, **kwargs)


def alive_nodes(env: dict[str, str]) -> list[dict]:
    listed = ray_cli(["ray", "list", "nodes", "--format", "json"], env, timeout=120)
    if listed.returncode != 0:
        return []
    return [node for node in json.loads(listed.stdout) if node["state"] == "ALIVE"]


@dataclass
class RunningCluster:
    values: dict[str, str]  # the recipe's placeholders for this cluster (HEAD, SECRET, ports)
    client: dict[str, str]  # the environment of a client: the recipe's exports
    temp_dir: Path  # Ray's, where the working dir is unpacked
    node_ids: set[str]
    barrier: Path  # one file per worker that wrote (tests/node_plugin)


@pytest.fixture
def recipe_cluster(tmp_path):
    """The recipe's head and one more node, on this machine, with token auth."""
    for attempt in range(START_TRIES):
        try:
            cluster, running = start_recipe_cluster(tmp_path / f"try{attempt}")
            break
        except PortClash:
            if attempt == START_TRIES - 1:
                raise
    try:
        yield running
    finally:
        left = cluster.stop()
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        assert not left, f"processes of the test cluster still running: {left}"


def start_recipe_cluster(folder: Path) -> tuple[LocalCluster, RunningCluster]:
    """Start the recipe's two nodes, every port chosen at once (tests/ports.py); raises PortClash (with the
    nodes stopped) when another process took one of them in the meantime."""
    commands = recipe_commands()
    gcs, dashboard, client_server, *ports = free_ports(3 + 2 * len(NODE_PORTS))
    values = {"HEAD": "127.0.0.1", "6379": str(gcs), "8265": str(dashboard), "SECRET": secrets.token_hex(32)}
    exported = dict(
        assignment.split("=", 1)
        for args in commands
        if args[0] == "export"
        for assignment in fill(args[1:], values)
    )
    assert exported.get("RAY_AUTH_MODE") == "token", "the recipe should turn token auth on"
    assert exported.get("RAY_ADDRESS") == f"http://127.0.0.1:{dashboard}", (
        "the recipe: RAY_ADDRESS for submit"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    # `ray` and the job's `python` are this environment's, even where it is not activated
    base["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")])
    client = {**base, **exported}
    barrier = folder / "barrier"
    barrier.mkdir(parents=True)
    nodes_env = {**client, "PYTHONPATH": str(NODE_PLUGIN), "ACTINDEX_TEST_BARRIER_DIR": str(barrier)}
    nodes_env.pop("RAY_ADDRESS")  # each `ray start` is given its address
    temp_dir = tempfile.mkdtemp(prefix="actindex-ray-", dir="/tmp")  # Ray's socket paths must be short
    cluster = LocalCluster(temp_dir, nodes_env)
    head_ports, node_ports = ports[: len(NODE_PORTS)], ports[len(NODE_PORTS) :]
    try:
        head = fill(command(commands, "ray", "start", "--head"), values) + node_options(temp_dir, head_ports)
        cluster.start(head + [f"--dashboard-port={dashboard}", f"--ray-client-server-port={client_server}"])
        node = fill(command(commands, "ray", "start", "--address=HEAD:6379"), values)
        cluster.start(node + node_options(temp_dir, node_ports))
        deadline = time.monotonic() + WAIT_S
        while len(nodes := alive_nodes(client)) < 2:
            assert time.monotonic() < deadline, "the second node did not join"
            time.sleep(1)
    except BaseException:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    node_ids = {node["node_id"] for node in nodes}
    return cluster, RunningCluster(values, client, Path(temp_dir), node_ids, barrier)


@pytest.fixture
def recipe_weights(tmp_path) -> str:
    """What fills the recipe's `--weights DEFAULT`: torchvision's pretrained ResNet-50 is a download, and the
    tests have no internet, so a state dict of a ResNet-50 stands in (the nodes and the local run load the
    same file, as every node of a real cluster loads the same pretrained weights)."""
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return str(path)


def test_the_recipe_runs_on_two_nodes_and_equals_the_local_executor(
    recipe_cluster, natural_dataset, recipe_weights, tmp_path
):
    cluster, commands = recipe_cluster, recipe_commands()
    client = cluster.client
    out, local = tmp_path / "idx", tmp_path / "local"
    values = {**cluster.values, "PHOTOS/": f"{natural_dataset}/", "/shared/idx/": f"{out}/"}
    values["DEFAULT"] = recipe_weights
    submit = fill(command(commands, "ray", "job", "submit"), values) + TEST_SIZE
    assert submit[:5] == ["ray", "job", "submit", "--working-dir", "."]
    assert submit[5:10] == ["--", "python", "-m", "actindex", "index"]

    submitted = ray_cli(submit, client, timeout=600)
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output[-5000:]
    job_id = re.search(r"Job '(raysubmit_\w+)' succeeded", output).group(1)
    assert "14 images: 14 indexed, 0 failed" in output
    assert re.search(r"actindex: 7/7 shards, 14/14 images, .* after start-up; done in", output)  # a log line

    other_token = {**client, "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # the cluster does check tokens
    refused = ray_cli(["ray", "job", "list"], other_token, timeout=120)
    assert refused.returncode != 0
    assert "Invalid authentication token" in refused.stderr, refused.stderr[-3000:]
    # a driver started by hand with the wrong token: one line that names the fix
    address = f"127.0.0.1:{cluster.values['6379']}"
    job = fill(command(commands, "ray", "job", "submit"), {**values, "/shared/idx/": f"{tmp_path / 'x'}/"})
    wrong = subprocess.run(
        [sys.executable, *job[7:], "--address", address], cwd=REPO, capture_output=True, text=True,
        env={**other_token, "RAY_ADDRESS": "", "RAY_gcs_server_port_wait_time_s": REFUSED_TRIES}, timeout=300,
    )  # fmt: skip
    lines = wrong.stderr.strip().splitlines()
    assert wrong.returncode == 2 and len(lines) == 1, wrong.stderr[-3000:]
    assert "could not join the Ray cluster" in lines[0] and "(InvalidAuthToken)" in lines[0]
    assert "RAY_AUTH_TOKEN" in lines[0]

    logs = ray_cli(
        fill(command(commands, "ray", "job", "logs"), {**values, "JOB_ID": job_id}), client, timeout=120
    )
    assert logs.returncode == 0 and "14 images: 14 indexed, 0 failed" in logs.stdout, logs.stderr[-3000:]

    # the same command without Ray, in this process (the CLI's app, as `python -m actindex` runs it), on as
    # many torch threads
    job = fill(command(commands, "ray", "job", "submit"), {**values, "/shared/idx/": f"{local}/"})
    assert job[6:9] == ["python", "-m", "actindex"]
    threads = torch.get_num_threads()
    torch.set_num_threads(CPUS)
    try:
        ran = invoke(*job[9:], *TEST_SIZE, "--executor", "local")
    finally:
        torch.set_num_threads(threads)
    assert ran.exit_code == 0, ran.output[-3000:]
    assert_same_tables(out, local)

    markers = IndexLayout(out).completed_shards().values()
    assert len(markers) == 7
    assert {m["writer"]["node"] for m in markers} == cluster.node_ids  # both nodes wrote shards
    writers = {f"worker-{m['writer']['pid']}" for m in markers}
    assert {p.name for p in cluster.barrier.iterdir()} == writers  # both went through the barrier

    packages = cluster.temp_dir.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*")
    uploaded = list({p.resolve() for p in packages if p.is_dir()})  # session_latest links to the session
    assert len(uploaded) == 1  # unpacked once, in the temp dir the two nodes share
    files = {p.relative_to(uploaded[0]).as_posix() for p in uploaded[0].rglob("*") if p.is_file()}
    assert "jobs/cli.py" in files and not any(f.startswith((".venv/", ".git/")) for f in files)
    if shutil.which("git") and (REPO / ".git").exists():  # what was uploaded is what git does not ignore
        git = ["git", "ls-files", "--cached", "--others", "--exclude-per-directory=.gitignore"]
        listed = subprocess.run(git, cwd=REPO, capture_output=True, text=True, check=True)
        assert files == with_linked_folders(listed.stdout.splitlines())


def with_linked_folders(paths: list[str]) -> set[str]:
    """`paths` (what git lists), with each link to a folder (the root's actindex/, pipeline/, jobs/ and
    queries/ lead into src/actindex) replaced by the files below it, as Ray's upload follows it."""
    files = set()
    for path in paths:
        linked = REPO / path
        if linked.is_symlink() and linked.is_dir():
            target = linked.resolve().relative_to(REPO.resolve()).as_posix()
            files |= {path + f[len(target) :] for f in paths if f.startswith(target + "/")}
        else:
            files.add(path)
    return files
