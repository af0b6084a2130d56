"""Trust under damage, on real files and real processes: unreadable and emptied folders, file
names that are not UTF-8, damaged sidecars, FAISS and catalog files, read-only indexes, a full
disk, failed runs, and the one model-identity rule."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
from conftest import make_video, run_cli, verify_index

import mgvr

# Root without these capabilities obeys file modes, as any other user would.
AS_PLAIN_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]


def _cli_without_dac(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*AS_PLAIN_USER, sys.executable, "-m", "mgvr.cli", *args],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    make_video(folder / "a.mp4", "testsrc2", "160x120", 2)
    make_video(folder / "sub" / "b.mp4", "smptebars", "160x120", 2)
    make_video(folder / "sub" / "c.mp4", "rgbtestsrc", "160x120", 2)
    make_video(folder / "d.mp4", "mandelbrot", "160x120", 2)
    return folder


def _index(folder, index_dir, tiny_model, *extra):
    return run_cli("index", str(folder), "--index", str(index_dir), "--model",
                   tiny_model["model"], "--pretrained", tiny_model["pretrained"], *extra)


def _paths(index_dir) -> set[str]:
    return {h.path for h in mgvr.Index(index_dir, device="cpu").search("x", limit=50)}


# 1. missing and unreadable folders ---------------------------------------------------------

def test_an_unreadable_folder_keeps_its_files(tmp_path, videos, tiny_model):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    (videos / "sub").chmod(0)
    try:
        result = _cli_without_dac("index", str(videos), "--index", str(index_dir),
                                  "--remove-after", "0")
    finally:
        (videos / "sub").chmod(0o755)
    assert result.returncode == 3, result.stderr
    assert f"unreadable folder (its indexed files are kept): {videos / 'sub'}" in result.stderr
    assert "removed 0" in result.stdout
    assert _paths(index_dir) == {str(p) for p in videos.rglob("*.mp4")}


def test_a_share_past_max_remove_is_refused_with_exit_5(tmp_path, videos, tiny_model):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    shutil.rmtree(videos / "sub")
    (videos / "a.mp4").unlink()  # 3 of 4 gone: over 50%
    result = _index(videos, index_dir, tiny_model, "--remove-after", "0")
    assert result.returncode == 5, result.stderr
    assert "3 of the 4 indexed files" in result.stderr and "--max-remove 100" in result.stderr
    assert len(_paths(index_dir)) == 4
    assert _index(videos, index_dir, tiny_model, "--remove-after", "0",
                  "--max-remove", "80").returncode == 0
    assert _paths(index_dir) == {str(videos / "d.mp4")}


def test_a_file_back_from_missing_is_kept_without_reencoding(tmp_path, videos, tiny_model):
    index = mgvr.Index(tmp_path / "idx", device="cpu")
    index.update(videos, settle_seconds=0, **tiny_model)
    before = {h.path: h.clip_id for h in index.search("x", limit=10)}
    shutil.move(videos / "a.mp4", tmp_path / "a.mp4")
    assert index.update(videos, settle_seconds=0).missing == 1
    report = json.loads(run_cli("status", "--index", str(tmp_path / "idx"), "--json").stdout)
    assert [m["path"] for m in report["missing"]] == [str(videos / "a.mp4")]
    shutil.move(tmp_path / "a.mp4", videos / "a.mp4")
    back = index.update(videos, settle_seconds=0)
    assert (back.restored, back.indexed, back.clips_added) == (1, 0, 0)
    assert {h.path: h.clip_id for h in index.search("x", limit=10)} == before


# 2. names that are not UTF-8, and names with control characters ----------------------------

def test_file_names_that_are_not_utf8_or_hold_escapes_index_and_print_safely(
        tmp_path, videos, tiny_model):
    source = (videos / "a.mp4").read_bytes()
    odd = os.fsdecode(b"bad\xff\xfe.mp4")
    (videos / odd).write_bytes(source)
    (videos / "evil\x1b[31m\nname.mp4").write_bytes(source)
    index_dir = tmp_path / "idx"
    result = _index(videos, index_dir, tiny_model)
    assert result.returncode == 0, result.stderr
    assert "indexed 6 files" in result.stdout
    found = json.loads(run_cli("search", "x", "--index", str(index_dir), "--json",
                               "--limit", "10").stdout)
    paths = {hit["path"] for hit in found["hits"]}
    assert str(videos / odd) in paths  # faithful: \udcff\udcfe round-trips to the bytes
    assert os.fsencode(str(videos / odd)).endswith(b"bad\xff\xfe.mp4")
    text = run_cli("search", "x", "--index", str(index_dir), "--limit", "10").stdout
    assert "bad\\xff\\xfe.mp4" in text
    assert "evil\\x1b[31m\\nname.mp4" in text and "\x1b" not in text
    assert verify_index(index_dir).clean


# 3. damaged sidecars and FAISS files ---------------------------------------------------------

def test_overwritten_sidecar_features_are_caught_and_rebuilt_from_parquet(
        tmp_path, videos, tiny_model):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    expected = run_cli("search", "x", "--index", str(index_dir), "--json").stdout
    sidecar = next((index_dir / "fine").glob("*.rows.npy"))
    data = bytearray(sidecar.read_bytes())
    data[-2000:-1000] = os.urandom(1000)  # feature bytes of the last row
    sidecar.write_bytes(bytes(data))
    search = run_cli("search", "x", "--index", str(index_dir))
    assert search.returncode == 1 and "fails its checksum" in search.stderr
    assert "verify --repair" in search.stderr and "Traceback" not in search.stderr
    check = run_cli("verify", "--index", str(index_dir))
    assert check.returncode == 1 and "rows.npy: fails its checksum" in check.stdout
    repaired = run_cli("verify", "--index", str(index_dir), "--repair")
    assert repaired.returncode == 0 and "rebuilt 1 sidecars from their Parquet parts" in \
        repaired.stdout
    assert json.loads(run_cli("search", "x", "--index", str(index_dir), "--json").stdout)[
        "hits"] == json.loads(expected)["hits"]


def test_random_sidecar_bytes_never_reach_a_rebuilt_faiss(tmp_path, videos, tiny_model):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    sidecar = next((index_dir / "fine").glob("*.rows.npy"))
    sidecar.write_bytes(os.urandom(sidecar.stat().st_size))
    for segment in (index_dir / "coarse").glob("*.faiss"):
        segment.write_bytes(os.urandom(segment.stat().st_size))
    repaired = run_cli("verify", "--index", str(index_dir), "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert "index is consistent" in repaired.stdout
    assert len(_paths(index_dir)) == 4  # from the intact Parquet copy, not the garbage


# 4. a missing, empty or garbage catalog ------------------------------------------------------

@pytest.mark.parametrize("damage", ["empty", "random", "missing"])
def test_a_damaged_catalog_is_damage_and_is_rebuilt_from_the_parts(tmp_path, videos,
                                                                   tiny_model, damage):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    expected = {(h.path, h.clip_id) for h in mgvr.Index(index_dir).search("x", limit=10)}
    catalog = index_dir / "catalog.sqlite"
    if damage == "missing":
        catalog.unlink()
    else:
        catalog.write_bytes(b"" if damage == "empty" else os.urandom(8192))
    files_before = sorted(p.name for p in (index_dir / "fine").iterdir())
    for command in (["search", "x"], ["status"], ["verify"],
                    ["index", str(videos), "--model", tiny_model["model"]]):
        result = run_cli(*command, "--index", str(index_dir))
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "verify --repair" in result.stdout + result.stderr, command
        assert "Traceback" not in result.stderr, command
    assert sorted(p.name for p in (index_dir / "fine").iterdir()) == files_before  # kept
    repaired = run_cli("verify", "--index", str(index_dir), "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert "catalog: rebuilt from 1 Parquet parts (4 files, 4 clips)" in repaired.stdout
    assert {(h.path, h.clip_id) for h in mgvr.Index(index_dir).search("x", limit=10)} == expected
    assert _index(videos, index_dir, tiny_model).returncode == 0
    assert verify_index(index_dir).clean


def test_a_lost_config_is_rebuilt_from_the_parts(tmp_path, videos, tiny_model):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    (index_dir / "mgvr.json").unlink()
    search = run_cli("search", "x", "--index", str(index_dir))
    assert search.returncode == 1 and "verify --repair" in search.stderr
    assert run_cli("verify", "--index", str(index_dir), "--repair").returncode == 0
    assert len(_paths(index_dir)) == 4


def test_a_first_run_killed_before_its_config_leaves_nothing_to_repair(tmp_path, videos,
                                                                        tiny_model):
    # What a kill between the catalog's creation and mgvr.json leaves (test_crash kills at
    # random moments and found it): a catalog with a run still "running" and no commit.
    from mgvr.storage.catalog import Catalog

    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    catalog = Catalog.create(index_dir / "catalog.sqlite")
    catalog.start_run("index", str(videos), 999999)
    catalog.close()
    assert verify_index(index_dir).clean
    assert run_cli("verify", "--index", str(index_dir)).returncode == 0
    search = run_cli("search", "x", "--index", str(index_dir))
    assert search.returncode != 0 and "has not committed anything" in search.stderr
    assert _index(videos, index_dir, tiny_model).returncode == 0
    assert len(_paths(index_dir)) == 4 and verify_index(index_dir).clean


# 6. read-only indexes ------------------------------------------------------------------------

def test_search_status_and_verify_work_on_an_index_that_cannot_be_written(
        tmp_path, videos, tiny_model):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in index_dir.rglob("*")}
    for path in [index_dir, *index_dir.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        search = _cli_without_dac("search", "x", "--index", str(index_dir), "--json")
        status = _cli_without_dac("status", "--index", str(index_dir))
        verify = _cli_without_dac("verify", "--index", str(index_dir))
        index = _cli_without_dac("index", str(videos), "--index", str(index_dir))
    finally:
        for path in [index_dir, *index_dir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert search.returncode == 0, search.stderr
    assert len(json.loads(search.stdout)["hits"]) == 4
    assert status.returncode == 0 and "4 files, 4 clips" in status.stdout, status.stderr
    assert verify.returncode == 0 and "index is consistent" in verify.stdout, verify.stderr
    assert index.returncode != 0 and "Traceback" not in index.stderr
    assert {p: p.stat().st_mtime_ns for p in index_dir.rglob("*")} == before


# 7. a full disk ------------------------------------------------------------------------------

def _mount_tmpfs(mount, size: str, *options: str) -> None:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([*options, f"size={size}"]),
                           "tmpfs", str(mount)], capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs for the full-disk test: {done.stderr}"


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs (the tests run as root; CI too), shrunk by the test once it holds an
    index."""
    mount = tmp_path / "small"
    mount.mkdir()
    _mount_tmpfs(mount, "64m")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_fails_in_one_line_and_keeps_the_last_commit(tmp_path, videos, tiny_model,
                                                                  small_disk):
    index_dir = small_disk / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    expected = _paths(index_dir)
    for i in range(40):  # 40 clips of features and thumbnails: more than 64 KB
        make_video(videos / "more" / f"m{i:02d}.mp4", "testsrc2", "320x240", 1)
    used = shutil.disk_usage(small_disk).used
    _mount_tmpfs(small_disk, str(used + 64 * 1024), "remount")
    result = _index(videos, index_dir, tiny_model, "--commit-every", "200")
    assert result.returncode == 6, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("mgvr: error")]
    assert len(lines) == 1 and "out of disk space" in lines[0] and str(index_dir) in lines[0]
    assert "MB free" in lines[0] and "Traceback" not in result.stderr
    assert _paths(index_dir) == expected  # the last commit, whole
    assert verify_index(index_dir).clean
    status = json.loads(run_cli("status", "--index", str(index_dir), "--json").stdout)
    assert status["runs"][0]["status"] == "failed"
    assert "out of disk space" in status["runs"][0]["error"]


# 8. failed runs are recorded -----------------------------------------------------------------

def test_a_run_that_fails_is_recorded_as_failed_with_its_reason(tmp_path, videos, tiny_model):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    make_video(videos / "new.mp4", "life", "160x120", 2)  # work to do: the model is loaded
    config = json.loads((index_dir / "mgvr.json").read_text())
    config["model"]["weights_sha256"] = "0" * 64  # as if the weights file changed since
    (index_dir / "mgvr.json").write_text(json.dumps(config))
    failed = run_cli("index", str(videos), "--index", str(index_dir))
    assert failed.returncode == 2 and "changed since the index was built" in failed.stderr
    text = run_cli("status", "--index", str(index_dir)).stdout
    assert "index" in text and "failed: " in text and "changed since the index was built" in text
    assert "did not finish" not in text


# 10. one model-identity rule -----------------------------------------------------------------

def test_index_and_search_accept_the_same_model_flags(tmp_path, videos, tiny_model):
    weights = tmp_path / "w.bin"
    shutil.copy(tiny_model["pretrained"], weights)
    index_dir = tmp_path / "idx"
    flags = ["--model", tiny_model["model"], "--pretrained", "w.bin"]  # relative to the cwd
    built = subprocess.run([sys.executable, "-m", "mgvr.cli", "index", str(videos), "--index",
                            str(index_dir), *flags], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    for command in (["index", str(videos)], ["search", "x"]):
        again = subprocess.run([sys.executable, "-m", "mgvr.cli", *command, "--index",
                                str(index_dir), *flags], cwd=tmp_path, capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0, (command, again.stderr)
    other = run_cli("search", "x", "--index", str(index_dir), "--pretrained", "none")
    assert other.returncode == 2 and "not none" in other.stderr
    random_index = tmp_path / "random"
    assert run_cli("index", str(videos), "--index", str(random_index), "--model",
                   tiny_model["model"], "--pretrained", "random").returncode == 0
    assert run_cli("search", "x", "--index", str(random_index), "--pretrained",
                   "random").returncode == 0


# small things --------------------------------------------------------------------------------

def test_pipes_and_devices_are_listed_as_skipped(tmp_path, videos, tiny_model):
    os.mkfifo(videos / "pipe.mp4")
    (videos / "device.mp4").symlink_to("/dev/null")
    result = _index(videos, tmp_path / "idx", tiny_model)
    assert result.returncode == 0, result.stderr
    assert f"skipped: {videos / 'pipe.mp4'}: not a regular file: a named pipe" in result.stderr
    assert f"skipped: {videos / 'device.mp4'}: not a regular file: a character device" in \
        result.stderr


def test_compact_counts_each_file_once(tmp_path, videos, tiny_model):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    result = run_cli("compact", "--index", str(index_dir))
    before, after = result.stdout.rsplit(";", 1)[1].split("->")
    assert float(after.split()[0]) <= float(before.split()[0])


def test_a_sqlite_file_of_another_program_is_not_taken_for_an_index(tmp_path):
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    sqlite3.connect(index_dir / "catalog.sqlite").execute("CREATE TABLE t (x)")
    result = run_cli("search", "x", "--index", str(index_dir))
    assert result.returncode == 1 and "verify --repair" in result.stderr


# found in review -----------------------------------------------------------------------------

def test_a_rebuild_killed_half_way_leaves_the_damaged_catalog_to_rebuild_again(
        tmp_path, videos, tiny_model):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    (index_dir / "catalog.sqlite").write_bytes(b"")
    repair = subprocess.Popen([sys.executable, "-m", "mgvr.cli", "verify", "--index",
                               str(index_dir), "--repair"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MGVR_TEST_PAUSE_BEFORE_COMMIT": "1"})
    assert repair.stderr.readline().startswith("mgvr: paused before commit")
    repair.kill()
    repair.wait()
    assert (index_dir / "catalog.sqlite").stat().st_size == 0  # still the damaged one
    still = run_cli("search", "x", "--index", str(index_dir))
    assert still.returncode == 1 and "verify --repair" in still.stderr  # not an empty index
    assert run_cli("verify", "--index", str(index_dir), "--repair").returncode == 0
    assert len(_paths(index_dir)) == 4


def test_a_rebuild_does_not_bring_back_files_removed_since(tmp_path, videos, tiny_model):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    (videos / "a.mp4").unlink()
    assert _index(videos, index_dir, tiny_model, "--remove-after", "0").returncode == 0
    assert str(videos / "a.mp4") not in _paths(index_dir)
    (index_dir / "catalog.sqlite").unlink()
    repaired = run_cli("verify", "--index", str(index_dir), "--repair")
    assert "1 files it held are gone now: recorded as missing" in repaired.stdout
    status = json.loads(run_cli("status", "--index", str(index_dir), "--json").stdout)
    assert [m["path"] for m in status["missing"]] == [str(videos / "a.mp4")]
    assert _index(videos, index_dir, tiny_model, "--remove-after", "0").returncode == 0
    assert str(videos / "a.mp4") not in _paths(index_dir)


def test_a_damaged_config_alone_is_rebuilt_without_touching_the_catalog(
        tmp_path, videos, tiny_model):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    (index_dir / "mgvr.json").write_text("")
    repaired = run_cli("verify", "--index", str(index_dir), "--repair")
    assert repaired.returncode == 0 and "mgvr.json: rebuilt" in repaired.stdout
    assert "catalog: rebuilt" not in repaired.stdout
    status = json.loads(run_cli("status", "--index", str(index_dir), "--json").stdout)
    assert status["runs"] and status["runs"][-1]["command"] == "index"  # the history is kept


def test_files_of_a_folder_that_cannot_be_searched_are_kept(tmp_path, videos, tiny_model):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    (videos / "sub").chmod(0o644)  # names listed, but no stat: a common chmod -R slip
    try:
        result = _cli_without_dac("index", str(videos), "--index", str(index_dir),
                                  "--remove-after", "0")
    finally:
        (videos / "sub").chmod(0o755)
    assert result.returncode == 3, result.stderr
    assert f"unreadable file (kept if indexed): {videos / 'sub' / 'b.mp4'}" in result.stderr
    assert "missing" not in result.stdout.split("in ")[0] or "0 newly missing" in result.stdout
    assert len(_paths(index_dir)) == 4


def test_a_renamed_file_that_had_failed_is_indexed_not_moved(tmp_path, videos, tiny_model):
    index_dir = tmp_path / "idx"
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    assert _index(videos, index_dir, tiny_model).returncode == 3
    os.rename(videos / "broken.mp4", videos / "renamed.mp4")
    result = _index(videos, index_dir, tiny_model)
    assert "moved 0" in result.stdout, result.stdout
    status = json.loads(run_cli("status", "--index", str(index_dir), "--json").stdout)
    assert [f["path"] for f in status["failed"]] == [str(videos / "renamed.mp4")]


def test_compaction_refuses_a_damaged_part_instead_of_laundering_it(tmp_path, videos,
                                                                    tiny_model):
    index_dir = tmp_path / "idx"
    assert _index(videos, index_dir, tiny_model).returncode == 0
    (videos / "a.mp4").unlink()
    assert _index(videos, index_dir, tiny_model, "--remove-after", "0").returncode == 0
    part = next((index_dir / "fine").glob("*.parquet"))
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0x01
    part.write_bytes(bytes(data))
    result = run_cli("compact", "--index", str(index_dir))
    assert result.returncode == 1 and "fails its checksum" in result.stderr
    assert not verify_index(index_dir).clean  # still reported, not laundered
