"""`mgvr index --ray` on a real local Ray cluster (2 CPUs): the same index as a local run,
a Ray worker SIGKILLed mid-run, the driver SIGKILLed before a commit, and clear one-line errors.

The cluster is this module's own: its own temp folder ($RAY_TMPDIR, so its address file and
sessions are apart from any other cluster on the machine), stopped at the end, and no process
of it may outlive the module. Nothing waits on a sleep for another process to get somewhere:
the tests act on what `mgvr index` prints, or on a Ray worker process taking up work (its
process title)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_video, run_cli, verify_index
from test_crash import _snapshot

from mgvr.storage.catalog import Catalog
from mgvr.storage.commit import PAUSE_ENV
from mgvr.storage.layout import IndexLayout

ray_cluster_utils = pytest.importorskip("ray.cluster_utils", reason="needs mgvr[ray]")
RUN_TIMEOUT_S = 300
# Ray's own notices in the driver's output: its C++ core's log lines on stderr (one when Ray
# Data starts its actors: "... has constructor arguments in the object store ..."), and on
# stdout the raylet's reports of a worker that died ("(raylet) A worker died ..."). mgvr's
# output is the rest.
RAY_NOTICE = re.compile(r"^(\[\d{4}-\d\d-\d\d [\d:,]+ [IWEF] \d+ \d+\] |\(raylet\) )")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _mgvr_lines(stderr: str) -> list[str]:
    lines = (ANSI.sub("", line) for line in stderr.splitlines())
    return [line for line in lines if line.strip() and not RAY_NOTICE.match(line)]


def _processes() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, command line)} of every process we can see."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        found[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return found


def _descendants(roots: set[int]) -> dict[int, str]:
    """{pid: command line} of the processes under `roots` (roots included)."""
    table = _processes()
    found = {pid: table[pid][1] for pid in roots if pid in table}
    grew = True
    while grew:
        grew = False
        for pid, (parent, cmdline) in table.items():
            if parent in found and pid not in found:
                found[pid] = cmdline
                grew = True
    return found


class LocalCluster:
    """A Ray cluster on this machine, made of nodes started by this test process."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.address = cluster.address

    def node_pids(self) -> set[int]:
        return {info.process.pid for node in self.cluster.list_all_nodes()
                for infos in node.all_processes.values() for info in infos}

    def processes(self) -> dict[int, str]:
        return _descendants(self.node_pids())

    def busy_worker(self, task: str, deadline: float) -> int:
        """The pid of this cluster's first worker process running `task` (its title,
        `ray::<task>`, set when it takes up work)."""
        while time.monotonic() < deadline:
            for pid, title in self.processes().items():
                if title.startswith("ray::") and task in title:
                    return pid
            time.sleep(0.02)
        pytest.fail(f"no Ray worker took up {task}")


@pytest.fixture(scope="module")
def cluster():
    # A short folder: Ray's socket paths under it must fit in 107 bytes.
    temp = Path(tempfile.mkdtemp(prefix="mgvr-ray-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", str(temp))
        started = ray_cluster_utils.Cluster(
            initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
        local = LocalCluster(started)
        roots = local.node_pids()
        try:
            yield local
        finally:
            everything = _descendants(roots)
            started.shutdown()
            # Workers exit once they see their raylet gone: wait for that, boundedly.
            deadline = time.monotonic() + 60
            while (left := [pid for pid in everything if pid in _processes()]) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(temp, ignore_errors=True)
            assert not left, f"Ray processes left behind: {[everything[p] for p in left]}"


def _args(folder, index_dir, tiny_model, *extra):
    return ["index", str(folder), "--index", str(index_dir), "--model", tiny_model["model"],
            "--pretrained", tiny_model["pretrained"], "--clip-seconds", "1", "--frames", "4",
            *extra]


def _relative(snapshot, folder):
    return {(os.path.relpath(path, folder), clip): value
            for (path, clip), value in snapshot.items()}


def _assert_same_index(got, expected):
    assert got.keys() == expected.keys()
    for key, (start, end, vector, features) in expected.items():
        assert (got[key][0], got[key][1]) == pytest.approx((start, end))
        assert np.allclose(got[key][2], vector, atol=1e-4)
        assert np.allclose(got[key][3].astype(np.float32), features.astype(np.float32),
                           atol=2e-3)


def _start(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "mgvr.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, tiny_model):
    """The local run's index of the shared corpus (10 videos, 1 s clips: 66 clips)."""
    index_dir = tmp_path_factory.mktemp("ray_reference") / "index"
    result = run_cli(*_args(corpus, index_dir, tiny_model), timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    snapshot = _relative(_snapshot(index_dir), corpus)
    assert len(snapshot) == 66
    return snapshot


def test_ray_run_gives_the_local_index(cluster, tmp_path, corpus, tiny_model, reference):
    index_dir = tmp_path / "index"
    result = run_cli(*_args(corpus, index_dir, tiny_model, "--commit-every", "20", "--ray",
                            cluster.address), timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    lines = _mgvr_lines(result.stderr)
    assert lines[0] == "mgvr: indexing 10 files", result.stderr  # the local run's progress
    assert [line for line in lines if not line.startswith("mgvr: ")] == [], result.stderr
    # rows come in no fixed order, so a 40-clip file may fill one commit: 2 commits at least
    assert sum(line.startswith("mgvr: committed generation") for line in lines) >= 2
    assert result.stdout.startswith("indexed 10 files (66 clips), unchanged 0")
    _assert_same_index(_relative(_snapshot(index_dir), corpus), reference)
    assert verify_index(index_dir).clean
    status = run_cli("status", "--index", str(index_dir))
    assert "on ray: 1 nodes, 0 GPUs: indexed 10 (66 clips)" in status.stdout, status.stdout


def test_a_worker_killed_mid_run_changes_nothing(cluster, tmp_path, corpus, tiny_model,
                                                 reference):
    """A decode task's worker, then an encode actor, SIGKILLed while they work: Ray retries
    the task and restarts the actor, and the run ends with the uninterrupted run's index."""
    index_dir = tmp_path / "index"
    run = _start(_args(corpus, index_dir, tiny_model, "--ray", cluster.address, "--quiet"))
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        killed = []
        for task in ("decode_rows", "EncodeActor"):
            pid = cluster.busy_worker(task, deadline)
            os.kill(pid, signal.SIGKILL)
            killed.append(task)
        out, err = run.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        run.kill()
    assert run.returncode == 0, err
    assert killed == ["decode_rows", "EncodeActor"]
    # --quiet, as in a local run (Ray reports the killed worker on stdout)
    assert _mgvr_lines(out) == _mgvr_lines(err) == [], out + err
    _assert_same_index(_relative(_snapshot(index_dir), corpus), reference)
    assert verify_index(index_dir).clean


def test_driver_killed_before_a_commit_then_a_local_run_resumes(cluster, tmp_path, corpus,
                                                                tiny_model, reference):
    folder = tmp_path / "videos"
    files = sorted(p for p in corpus.rglob("*") if p.is_file())
    for path in files[:4]:
        (folder / path.relative_to(corpus)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, folder / path.relative_to(corpus))
    index_dir = tmp_path / "index"
    assert run_cli(*_args(folder, index_dir, tiny_model), timeout=RUN_TIMEOUT_S).returncode == 0
    before = _snapshot(index_dir)
    layout = IndexLayout(index_dir)
    known = set(layout.data_files())
    for path in files[4:]:
        (folder / path.relative_to(corpus)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, folder / path.relative_to(corpus))

    driver = _start(_args(folder, index_dir, tiny_model, "--ray", cluster.address),
                    env={PAUSE_ENV: "1"})
    try:
        for line in driver.stderr:
            if line.startswith("mgvr: paused before commit 2"):
                break
        else:
            pytest.fail(f"the driver ended without pausing: {driver.stderr.read()}")
        driver.send_signal(signal.SIGKILL)
        assert driver.wait(timeout=60) == -signal.SIGKILL
    finally:
        driver.kill()
    assert set(layout.data_files()) - known  # the commit's files, written: orphans now
    catalog = Catalog(layout.catalog)
    assert catalog.generation() == 1
    catalog.close()
    assert verify_index(index_dir).clean
    assert _snapshot(index_dir).keys() == before.keys()

    result = run_cli(*_args(folder, index_dir, tiny_model), timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    _assert_same_index(_relative(_snapshot(index_dir), folder), reference)
    assert verify_index(index_dir).clean
    catalog = Catalog(layout.catalog)
    registered = {layout.root / name for name in catalog.files()}
    catalog.close()
    assert set(layout.data_files()) <= registered  # the killed run's orphans are gone
    assert not [p for p in index_dir.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def small_index(tmp_path, tiny_model):
    """An index of two files built with its own copy of the weights, and a third file to
    index next."""
    weights = tmp_path / "weights.pt"
    shutil.copy(tiny_model["pretrained"], weights)
    folder = tmp_path / "videos"
    make_video(folder / "a.mp4", "testsrc2", "160x120", 2)
    make_video(folder / "b.mp4", "smptebars", "160x120", 2)
    index_dir = tmp_path / "index"
    args = ["index", str(folder), "--index", str(index_dir), "--model", tiny_model["model"],
            "--pretrained", str(weights)]
    assert run_cli(*args).returncode == 0
    make_video(folder / "c.mp4", "mandelbrot", "160x120", 2)
    return folder, index_dir, weights


def _state(index_dir):
    layout = IndexLayout(index_dir)
    catalog = Catalog(layout.catalog)
    try:
        return catalog.generation(), sorted(p.name for p in layout.data_files())
    finally:
        catalog.close()


def test_a_node_without_ffmpeg_is_one_line_and_changes_nothing(cluster, small_index):
    folder, index_dir, _ = small_index
    before = _state(index_dir)
    node = cluster.cluster.add_node(num_cpus=1, env_vars={"MGVR_FFMPEG": "/nonexistent/ffmpeg"})
    try:
        result = run_cli("index", str(folder), "--index", str(index_dir), "--ray",
                         cluster.address, timeout=RUN_TIMEOUT_S)
    finally:
        cluster.cluster.remove_node(node)
    assert result.returncode == 1, result.stderr
    assert len(_mgvr_lines(result.stderr)) == 1, result.stderr
    assert "$MGVR_FFMPEG names /nonexistent/ffmpeg, which is not a program" in result.stderr
    assert "install FFmpeg on every node" in result.stderr
    assert _state(index_dir) == before


def test_a_model_that_cannot_load_is_one_line_and_changes_nothing(cluster, small_index):
    folder, index_dir, weights = small_index
    before = _state(index_dir)
    weights.unlink()
    result = run_cli("index", str(folder), "--index", str(index_dir), "--ray", cluster.address,
                     timeout=RUN_TIMEOUT_S)
    assert result.returncode == 2, result.stderr  # a weights file that is not there
    assert len(_mgvr_lines(result.stderr)) == 1, result.stderr
    assert str(weights) in result.stderr
    assert _state(index_dir) == before


def test_an_encode_actor_that_cannot_load_the_model_reports_it_as_a_row(small_index):
    """The actor class itself, as Ray Data runs it in a worker: a model it cannot load is not
    raised (Ray would retry or crash the pool) but returned as an error row for the driver."""
    from mgvr.config import IndexConfig
    from mgvr.distributed.encode import EncodeActor
    from mgvr.distributed.records import COLUMN, WorkerError, pack, unpack
    from mgvr.errors import UsageError

    _, index_dir, weights = small_index
    weights.unlink()
    actor = EncodeActor(str(index_dir), IndexConfig.load(index_dir), "cpu")
    out = actor({COLUMN: np.array([pack("anything")[COLUMN]], dtype=object)})
    [record] = [unpack({COLUMN: value}) for value in out[COLUMN]]
    assert isinstance(record, WorkerError)
    assert isinstance(record.error, UsageError) and str(weights) in str(record.error)


def test_without_ray_installed_it_says_how_to_install_it(tmp_path, corpus):
    """Ray made unimportable in the CLI's process (sys.modules["ray"] = None)."""
    code = ("import sys; sys.modules['ray'] = None; from mgvr.cli import main; "
            "sys.argv = ['mgvr', *sys.argv[1:]]; main()")
    result = subprocess.run([sys.executable, "-c", code, "index", str(corpus), "--index",
                             str(tmp_path / "index"), "--ray", "auto"], capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        'mgvr: error: --ray needs Ray Data, which is not installed; install it with '
        '`pip install "mgvr[ray]"` (Ray Data 2.60)'], result.stderr
    assert not (tmp_path / "index").exists()


def test_an_address_nothing_answers_on_is_one_line_at_once():
    from mgvr.distributed.cluster import connect
    from mgvr.errors import UsageError

    with socket.socket() as free:  # a port nothing listens on once closed
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(UsageError, match=f"--ray 127.0.0.1:{port}: no Ray cluster answers"):
        connect(f"127.0.0.1:{port}")
    assert time.monotonic() - started < 30  # Ray itself would retry for minutes
