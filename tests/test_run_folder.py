"""--overwrite replaces only ddmetrics run folders, and only the files a run wrote."""
import os

import pytest

from ddmetrics._run_folder import MANIFEST, check_out, write_run_folder


def _writer(text):
    def write(path):
        with open(path, "w") as fh:
            fh.write(text)
    return write


def _run(out, text="new", overwrite=False):
    return write_run_folder(out, {"synset.pt": _writer(text), "report.json": _writer(text)}, overwrite=overwrite)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's project folder as the current folder, with a file that must survive."""
    proj = tmp_path / "project"
    (proj / "src").mkdir(parents=True)
    (proj / "notes.txt").write_text("mine")
    monkeypatch.chdir(proj)
    return proj


def test_new_run_folder_has_manifest_listing_its_files(project):
    out = project / "runs" / "a"
    _run(out)
    assert sorted(os.listdir(out)) == sorted([MANIFEST, "report.json", "synset.pt"])
    assert not any(n.endswith(".writing") for n in os.listdir(project / "runs"))


def test_existing_folder_needs_overwrite(project):
    out = project / "runs" / "a"
    _run(out, "old")
    with pytest.raises(ValueError, match="--overwrite"):
        _run(out)
    assert (out / "synset.pt").read_text() == "old"


def test_overwrite_replaces_only_the_runs_files(project):
    out = project / "runs" / "a"
    _run(out, "old")
    (project / "runs" / "b.txt").write_text("sibling")
    _run(out, "new", overwrite=True)
    assert (out / "synset.pt").read_text() == "new"
    assert (project / "runs" / "b.txt").read_text() == "sibling"
    assert (project / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("target,reason", [(".", "current folder"), ("src/..", "current folder"),
                                           ("..", "parent of the current folder")])
def test_overwrite_refuses_current_folder_and_parents(project, target, reason):
    with pytest.raises(ValueError, match=reason):
        check_out(target, overwrite=True)
    assert (project / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_current_folder_even_if_it_looks_like_a_run(project):
    _run(project / "r")
    os.chdir(project / "r")
    with pytest.raises(ValueError, match="current folder"):
        _run(".", overwrite=True)
    assert (project / "r" / "synset.pt").read_text() == "new"


def test_overwrite_refuses_home(project, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("keep")
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ValueError, match="home folder"):
        _run(home, overwrite=True)
    assert (home / ".bashrc").read_text() == "keep"


def test_overwrite_refuses_a_folder_that_is_not_a_run(project):
    with pytest.raises(ValueError, match="not a ddmetrics run folder"):
        _run(project / "src", overwrite=True)
    (project / "src" / "code.py").write_text("x = 1")
    with pytest.raises(ValueError, match="not a ddmetrics run folder"):
        _run(project / "src", overwrite=True)
    assert (project / "src" / "code.py").read_text() == "x = 1"


def test_overwrite_refuses_a_run_folder_with_other_files(project):
    out = project / "runs" / "a"
    _run(out, "old")
    (out / "my_analysis.ipynb").write_text("precious")
    with pytest.raises(ValueError, match="my_analysis.ipynb"):
        _run(out, overwrite=True)
    assert (out / "my_analysis.ipynb").read_text() == "precious"
    assert (out / "synset.pt").read_text() == "old"


def test_out_naming_a_file_is_refused(project):
    with pytest.raises(ValueError, match="is a file"):
        _run(project / "notes.txt", overwrite=True)
    assert (project / "notes.txt").read_text() == "mine"


def test_unwritable_out_is_refused_before_work():
    with pytest.raises(ValueError, match="cannot write"):
        check_out("/proc/ddmetrics-x", overwrite=False)


def test_a_failing_writer_leaves_the_previous_run(project):
    out = project / "runs" / "a"
    _run(out, "old")

    def boom(path):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_run_folder(out, {"synset.pt": _writer("new"), "report.json": boom}, overwrite=True)
    assert (out / "synset.pt").read_text() == "old"
    assert sorted(os.listdir(project / "runs")) == ["a"]


# -- the lock: one run at a time writes a folder

def test_a_held_lock_refuses_a_second_taker_naming_the_holder(tmp_path):
    import json

    from ddmetrics._run_folder import FolderLock

    first = FolderLock(tmp_path / "runs" / "a", "--out").acquire()
    record = json.loads((tmp_path / "runs" / ".a.lock").read_text())
    assert record["pid"] == os.getpid() and record["host"] and record["started"]
    with pytest.raises(ValueError, match=f"being written by another ddmetrics run \\(pid {os.getpid()} "):
        FolderLock(tmp_path / "runs" / "a", "--out").acquire()
    first.release()
    assert not (tmp_path / "runs").exists()  # made for the lock file alone, removed with it
    with FolderLock(tmp_path / "runs" / "a", "--out") as again:
        assert again.note is None
    assert not (tmp_path / "runs").exists()


def test_a_lock_held_before_its_record_is_written_is_refused_saying_so(tmp_path):
    """A run that meets the lock between its holder's flock and its record cannot name the holder: it
    says the lock is being taken, and leaves the holder's empty file as it is."""
    import fcntl

    from ddmetrics._run_folder import FolderLock

    lock = tmp_path / ".a.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a holder that has not written its record yet
        with pytest.raises(ValueError, match=r"^--out .*a is being written by another ddmetrics run \(which is "
                                             r"taking the lock right now\); wait for it to end or choose another --out$"):
            FolderLock(tmp_path / "a", "--out").acquire()
        assert lock.read_bytes() == b"" and sorted(os.listdir(tmp_path)) == [".a.lock"]
    finally:
        os.close(fd)


def _dead_pid():
    """A pid that no process on this host has."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def _left_lock(folder, **record):
    import json
    import socket

    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.parent / ("." + folder.name + ".lock")
    path.write_text(json.dumps({"host": socket.gethostname(), "started": "2020-01-01 00:00:00", **record}))
    return path


def test_a_lock_left_by_a_dead_pid_is_taken_over_with_a_note(tmp_path):
    from ddmetrics._run_folder import FolderLock

    pid = _dead_pid()
    path = _left_lock(tmp_path / "a", pid=pid)
    lock = FolderLock(tmp_path / "a", "--out").acquire()
    assert f"pid {pid}" in lock.note and "ended without removing it" in lock.note
    assert f'"pid": {os.getpid()}' in path.read_text()
    lock.release()
    assert not path.exists()


@pytest.mark.parametrize("record,needle", [({"host": "elsewhere.example"}, "another host"),
                                           ({"pid": os.getppid()}, "that pid is alive")])
def test_a_lock_that_cannot_be_proven_stale_is_refused_naming_the_file(tmp_path, record, needle):
    from ddmetrics._run_folder import FolderLock

    path = _left_lock(tmp_path / "a", **{"pid": _dead_pid(), **record})
    before = path.read_text()
    with pytest.raises(ValueError, match=needle) as err:
        FolderLock(tmp_path / "a", "--out").acquire()
    assert f"remove {path}" in str(err.value) and path.read_text() == before
