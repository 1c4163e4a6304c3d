"""The results database: other programs' files and damaged ones are refused untouched; reading needs no write access."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dlcbench.errors import BadInputError
from dlcbench.results.store import APPLICATION_ID, SCHEMA_VERSION, ResultsStore
from dlcbench_test_support import ROOT, assert_one_line_error, run_script

V1_DB = ROOT / "tests" / "support" / "results-schema1.sqlite"
COMPARE = ["scripts/compare.py", "--name", "exp", "--models", "mlp", "--backends", "onnxruntime", "--preset", "tiny",
           "--batch", "1,2", "--threads", "1", "--min-seconds", "0", "--min-iters", "3"]


def _state(path: Path) -> tuple[str, int, list[str]]:
    """What must not change: the file's bytes, its mtime, and the names beside it (no journal, no backup)."""
    return (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns,
            sorted(p.name for p in path.parent.iterdir()))


@pytest.fixture(scope="module")
def results_db(tmp_path_factory) -> Path:
    """A real results database: two tiny ONNX Runtime jobs run by scripts/compare.py."""
    db = tmp_path_factory.mktemp("db") / "r.sqlite"
    proc = run_script(*COMPARE, "--db", str(db), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return db


def _copy(src: Path, directory: Path, name: str = "r.sqlite") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(src, directory / name))


def _foreign_meta(path: Path) -> None:
    """Another program's database that happens to have a meta(key, value) table with a schema row."""
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    con.close()


def _foreign_id(path: Path) -> None:
    """dlcbench's table names, but another program's application id."""
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA application_id=1234567")
        for table in ("meta (key, value)", "experiments (name)", "results (experiment, job_key, status)"):
            con.execute(f"CREATE TABLE {table}")
        con.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    con.close()


def _empty_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA user_version=7")  # a valid SQLite file with no tables
    con.close()


def _text(path: Path) -> None:
    path.write_text("just text, not a database\n" * 100)


@pytest.mark.parametrize("make, fragment", [(_foreign_meta, "not a dlcbench one"), (_foreign_id, "another program"),
                                            (_empty_sqlite, "not a dlcbench one"), (_text, "not an SQLite file")])
def test_what_is_not_ours_is_refused_byte_for_byte_untouched(tmp_path, make, fragment):
    path = tmp_path / "other.sqlite"
    make(path)
    before = _state(path)
    for readonly in (False, True):
        with pytest.raises(BadInputError, match=fragment):
            ResultsStore(path, readonly=readonly)
    assert _state(path) == before


def test_compare_and_report_refuse_a_foreign_database(tmp_path):
    path = tmp_path / "other.sqlite"
    _foreign_meta(path)
    before = _state(path)
    assert_one_line_error(run_script(*COMPARE, "--db", str(path)), 2, "not a dlcbench one")
    assert_one_line_error(run_script("scripts/report.py", "exp", "--db", str(path), "--export", "csv"), 2,
                          "not a dlcbench one")
    assert _state(path) == before


def test_databases_written_before_the_application_id_are_recognised_and_stamped(tmp_path, results_db):
    unstamped = _copy(results_db, tmp_path / "v2")
    with sqlite3.connect(unstamped) as con:
        con.execute("PRAGMA application_id=0")  # as the previous dlcbench wrote schema-2 files
    con.close()
    v1 = _copy(V1_DB, tmp_path / "v1")
    for path in (unstamped, v1):
        with ResultsStore(path, readonly=True) as store:  # read-only: recognised, not stamped
            assert store.results(store.experiments()[0])
        with sqlite3.connect(path) as con:
            assert con.execute("PRAGMA application_id").fetchone()[0] == 0
        con.close()
        with ResultsStore(path) as store:
            assert store.results(store.experiments()[0])
        with sqlite3.connect(path) as con:
            assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
            assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        con.close()
    assert (v1.parent / "r.sqlite.v1-backup").is_file() and not (unstamped.parent / "r.sqlite.v1-backup").exists()


def test_a_damaged_database_is_refused_by_every_command_and_left_as_it_is(tmp_path, results_db):
    db = _copy(results_db, tmp_path / "damaged")
    size = db.stat().st_size
    page = 4096
    assert size >= 8 * page
    with open(db, "r+b") as fh:  # garbage over one page in the middle
        fh.seek((size // page // 2) * page)
        fh.write(bytes((i * 37 + 11) % 256 for i in range(page)))
    before = _state(db)
    for args in (COMPARE, [*COMPARE, "--force"], ["scripts/report.py", "exp", "--out", str(tmp_path / "rep")],
                 ["scripts/report.py", "exp", "--export", "csv"]):
        proc = run_script(*args, "--db", str(db))
        assert_one_line_error(proc, 2, "damaged", str(db))
        assert _state(db) == before, args
    assert not (tmp_path / "rep").exists()


def _no_write_override():
    """For a root process: a ``preexec_fn`` that drops the capabilities which let root ignore permission bits
    (from the bounding set, so the exec'd child has none of them); None for other users."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_READ, PR_CAPBSET_DROP = 23, 24
    CAPS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
    if any(libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) < 0 for cap in CAPS):
        pytest.skip("running as root where capabilities cannot be read: permission bits would not stop writes")

    def drop() -> None:
        for cap in CAPS:
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                os._exit(97)

    probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=drop)
    if probe.returncode == 97:
        pytest.skip("running as root without CAP_SETPCAP: permission bits cannot be enforced on the reader")
    return drop


def test_reports_read_a_read_only_database_without_writing(tmp_path, results_db):
    ro_dir = tmp_path / "ro"
    db = _copy(results_db, ro_dir)
    old = _copy(V1_DB, ro_dir, "old.sqlite")  # schema 1: migrated in memory only
    with sqlite3.connect(f"file:{old}?mode=ro", uri=True) as con:
        old_experiment = con.execute("SELECT name FROM experiments").fetchone()[0]
    con.close()
    for path in (db, old):
        path.chmod(0o444)
    ro_dir.chmod(0o555)
    preexec = _no_write_override()
    try:
        before = {p: _state(p) for p in (db, old)}
        probe = subprocess.run([sys.executable, "-c", f"open({str(ro_dir / 'x')!r}, 'w')"], preexec_fn=preexec,
                               capture_output=True, text=True)
        assert probe.returncode != 0 and "Permission denied" in probe.stderr  # the directory really is read-only

        def report(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), *args], cwd=tmp_path,
                                  capture_output=True,
                                  text=True, timeout=300, preexec_fn=preexec)

        csv = report("exp", "--db", str(db), "--export", "csv")
        assert csv.returncode == 0, csv.stderr[-2000:]
        assert csv.stdout.startswith("experiment,model,backend") and csv.stdout.count("\nexp,mlp,onnxruntime,") == 2
        full = report("exp", "--db", str(db), "--out", str(tmp_path / "report"))
        assert full.returncode == 0, full.stderr[-2000:]
        assert "| mlp | onnxruntime |" in (tmp_path / "report" / "report.md").read_text()
        migrated = report(old_experiment, "--db", str(old), "--export", "json")
        assert migrated.returncode == 0, migrated.stderr[-2000:]
        assert '"latency"' in migrated.stdout  # schema-1 columns read as schema-2 metrics
        assert {p: _state(p) for p in (db, old)} == before
    finally:
        ro_dir.chmod(0o755)
