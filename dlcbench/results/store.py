"""The results store: an embedded SQLite database, one row per job.

Every write is one transaction, so an interrupted run never leaves a half
row. A database is ours when its ``PRAGMA application_id`` is :data:`APPLICATION_ID`
(or, for files written before the id existed, when its tables and schema row are
dlcbench's); anything else, and a damaged file, is refused before any write and
left byte for byte as it was. Readers open the file read-only. A result that
cannot be written because another process holds the database locked goes to a
journal beside it (``NAME.pending/``), imported by the next writer.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, TypeVar

from dlcbench import jsonio
from dlcbench.errors import BadInputError, one_line
from dlcbench.processes import process_alive, process_start

SCHEMA_VERSION = 2
DEFAULT_DB = Path("results") / "dlcbench.sqlite"
#: ``PRAGMA application_id`` of a dlcbench results database: the bytes ``DLCB``.
APPLICATION_ID = int.from_bytes(b"DLCB", "big")
#: Seconds a write waits for another process's lock (``$DLCBENCH_DB_WAIT`` overrides).
DEFAULT_WAIT_S = 30.0
WAIT_ENV = "DLCBENCH_DB_WAIT"
T = TypeVar("T")
_SQLITE_HEADER = b"SQLite format 3\x00"

_BASE_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS environments (
    id INTEGER PRIMARY KEY, digest TEXT UNIQUE NOT NULL, record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT PRIMARY KEY, created TEXT NOT NULL, config TEXT NOT NULL
);
"""
_RESULTS_TABLE = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    experiment TEXT NOT NULL REFERENCES experiments(name),
    job_key TEXT NOT NULL,
    model TEXT NOT NULL, backend TEXT NOT NULL, target TEXT NOT NULL, precision TEXT NOT NULL,
    batch INTEGER NOT NULL, threads INTEGER NOT NULL,
    status TEXT NOT NULL,              -- ok | failed
    category TEXT,                     -- NULL when ok; unavailable, export_error, compile_error, ...
    message TEXT,
    check_metrics TEXT, manifest TEXT, config TEXT,
    environment_id INTEGER REFERENCES environments(id),
    created TEXT NOT NULL,
    UNIQUE (experiment, job_key)
);
"""
_METRICS_TABLE = """
-- Every measurement of a job, one row per metric (dlcbench.measure.trackers): long format, so a new metric
-- needs no new column.
CREATE TABLE IF NOT EXISTS metrics (
    result_id INTEGER NOT NULL REFERENCES results(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value REAL,
    unit TEXT NOT NULL,
    samples TEXT,                      -- JSON list, in unit
    detail TEXT,                       -- JSON object
    PRIMARY KEY (result_id, name)
);
"""
_COVERAGE_TABLE = """
-- ONNX operator coverage (scripts/coverage.py): one row per (run, node test, backend).
CREATE TABLE IF NOT EXISTS coverage (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    test TEXT NOT NULL,
    op TEXT NOT NULL, domain TEXT NOT NULL, opset INTEGER, expanded INTEGER NOT NULL,
    backend TEXT NOT NULL, backend_version TEXT,
    status TEXT NOT NULL,              -- pass | wrong_result | unsupported | error | crash | timeout | skipped
    message TEXT, max_abs_err REAL, seconds REAL,
    environment_id INTEGER REFERENCES environments(id),
    created TEXT NOT NULL,
    UNIQUE (run, test, backend)
);
"""
_CLAIMS_TABLE = """
-- Jobs being run right now, one row per (experiment, job): a second run of the same experiment skips them.
-- A claim whose process is gone (same host) is stale and taken over.
CREATE TABLE IF NOT EXISTS claims (
    experiment TEXT NOT NULL,
    job_key TEXT NOT NULL,
    pid INTEGER NOT NULL, host TEXT NOT NULL,
    process_start TEXT,                -- the process's start time (tells a reused pid apart)
    started TEXT NOT NULL,
    PRIMARY KEY (experiment, job_key)
);
"""
_SCHEMA = _BASE_TABLES + _RESULTS_TABLE + _METRICS_TABLE + _COVERAGE_TABLE + _CLAIMS_TABLE
#: Every table a dlcbench database may hold (one written before a table existed lacks it).
_TABLES = ("meta", "environments", "experiments", "results", "metrics", "coverage", "claims")

COVERAGE_COLUMNS = ("run", "test", "op", "domain", "opset", "expanded", "backend", "backend_version", "status",
                    "message", "max_abs_err", "seconds", "environment_id", "created")

#: Identity and outcome columns of a result row (its metrics live in the ``metrics`` table).
COLUMNS = ("experiment", "model", "backend", "target", "precision", "batch", "threads", "status", "category",
           "message", "created")
_JSON_COLUMNS = ("check_metrics", "manifest", "config")


class StoreLockedError(BadInputError):
    """Another process held the results database locked for longer than the store waits."""


def pending_dir_of(db: Path | str) -> Path:
    """The journal directory of database ``db``: ``NAME.pending`` beside it."""
    db = Path(db)
    return db.with_name(db.name + ".pending")


@dataclass(frozen=True)
class Refusal:
    """Why :meth:`ResultsStore.claim` did not give a job to this process."""

    kind: str  # held: another live run has it; recorded: a row was written meanwhile
    reason: str


class ResultsStore:
    """A dlcbench results database (created on first use unless ``readonly``).

    Args:
        path: The database file.
        timeout: Seconds a write waits, with backoff, for another process's lock
            (default: ``$DLCBENCH_DB_WAIT`` or :data:`DEFAULT_WAIT_S`).
        readonly: Open with ``mode=ro``: nothing is created, written or migrated (a schema-1
            file is migrated into an in-memory copy); write methods raise.
        say: Where one-line notices go (journaled results imported); default stderr.

    Raises:
        BadInputError: the file is missing (read-only), is not an SQLite database, is another
            program's database, is damaged (``PRAGMA quick_check``), has a newer schema, or stays locked
            (:class:`StoreLockedError`). The file is left untouched in every case.
    """

    def __init__(self, path: Path | str = DEFAULT_DB, timeout: float | None = None, *, readonly: bool = False,
                 say: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.readonly = readonly
        self.timeout = default_wait() if timeout is None else float(timeout)
        self._say = say or (lambda line: print(line, file=sys.stderr))
        self._me = (os.getpid(), socket.gethostname(), process_start(os.getpid()))
        self._db: sqlite3.Connection | None = None
        try:
            self._open()
        except sqlite3.DatabaseError as err:
            self.close()
            raise BadInputError(f"{self.path} is not usable as a results database: {one_line(err, 200)}") from None
        except BaseException:
            self.close()
            raise

    @property
    def pending_dir(self) -> Path:
        """Where results go while the database stays locked (``NAME.pending``); the next writer imports them."""
        return pending_dir_of(self.path)

    # ----------------------------------------------------------------- opening

    def _open(self) -> None:
        header = self._header()
        if header is None:  # a new database
            if self.readonly:
                raise BadInputError(f"no results database at {self.path}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise BadInputError(f"cannot create results directory {self.path.parent}: {err.strerror}") from None
            self._connect(readonly=False)
            self._transact(lambda db: self._create(db))
            self._import_pending()
            return
        app_id = int.from_bytes(header[68:72], "big")
        if app_id not in (0, APPLICATION_ID):
            raise BadInputError(f"{self.path} is an SQLite database of another program (application id "
                                f"0x{app_id:08x}, dlcbench's is 0x{APPLICATION_ID:08x}); refusing to touch it")
        if 2 in (header[18], header[19]) and app_id != APPLICATION_ID:  # WAL: even reading would add files
            raise BadInputError(f"{self.path} is an SQLite database in WAL mode that dlcbench did not write; "
                                "refusing to touch it")
        # Inspect through a read-only connection: a foreign or damaged file is refused without any write,
        # not even the rollback of a hot journal.
        try:
            self._connect(readonly=True)
            version, tables = self._inspect(app_id)
        except sqlite3.OperationalError as err:
            if getattr(err, "sqlite_errorname", "") != "SQLITE_READONLY_ROLLBACK" or app_id != APPLICATION_ID:
                raise
            if self.readonly:  # our own file, interrupted mid-write: only a writer may roll the journal back
                raise BadInputError(f"{self.path} has an unfinished transaction ({self.path.name}-journal); open it "
                                    "once for writing (e.g. run compare on it) to roll it back") from None
            self.close()
            self._connect(readonly=False)
            version, tables = self._inspect(app_id)
        missing = [t for t in _TABLES if t not in tables]
        if self.readonly:
            if version < SCHEMA_VERSION or missing:  # upgrade a copy in memory; the file stays as it is
                memory = sqlite3.connect(":memory:")
                self._db.backup(memory)
                self._db.close()
                self._db = memory
                self._db.row_factory = sqlite3.Row
                self._upgrade(version, app_id, missing, backup=False)
            pending = sorted(self.pending_dir.glob("*.json")) if self.pending_dir.is_dir() else []
            if pending:
                self._say(f"note: {len(pending)} result(s) waiting in {self.pending_dir} are not in {self.path} "
                          "yet; the next run that writes to it imports them")
            return
        if self._readonly_connection:
            self.close()
            self._connect(readonly=False)
        self._upgrade(version, app_id, missing, backup=True)
        self._import_pending()

    def _header(self) -> bytes | None:
        """The file's first 100 bytes; None when there is no file or it is empty (a new database)."""
        try:
            with open(self.path, "rb") as fh:
                header = fh.read(100)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise BadInputError(f"{self.path} is a directory, not a results database") from None
        except OSError as err:
            raise BadInputError(f"cannot read {self.path}: {err.strerror}") from None
        if not header:
            return None
        if len(header) < 100 or not header.startswith(_SQLITE_HEADER):
            raise BadInputError(f"{self.path} is not usable as a results database: not an SQLite file; "
                                "refusing to touch it")
        return header

    def _connect(self, readonly: bool) -> None:
        if readonly:
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=self.timeout)
        else:
            self._db = sqlite3.connect(str(self.path), timeout=self.timeout)
        self._readonly_connection = readonly
        self._db.row_factory = sqlite3.Row

    def _inspect(self, app_id: int) -> tuple[int, set[str]]:
        """Identifies and checks an existing file; returns its schema version and tables (reads only)."""
        try:
            return self._identify(app_id)
        except sqlite3.DatabaseError as err:
            name = getattr(err, "sqlite_errorname", "")
            if name.startswith("SQLITE_READONLY"):
                raise
            if isinstance(err, sqlite3.OperationalError) and _is_locked(err):
                raise StoreLockedError(f"{self.path} stayed locked by another process for {self.timeout:g} s "
                                       f"(${WAIT_ENV} or --db-wait sets how long to wait)") from None
            raise BadInputError(f"{self.path} is damaged or not a database ({one_line(err, 200)}); "
                                "left untouched") from None

    def _identify(self, app_id: int) -> tuple[int, set[str]]:
        db = self._db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if not r[0].startswith("sqlite_")}
        listing = ", ".join(sorted(tables)) or "none"
        if app_id != APPLICATION_ID:  # written before the id existed, or by someone else
            ours = {"meta", "experiments", "results"} <= tables <= set(_TABLES)
            if ours:
                columns = {r[1] for r in db.execute("PRAGMA table_info(results)")}
                ours = {"experiment", "job_key", "status"} <= columns and {"key", "value"} <= {
                    r[1] for r in db.execute("PRAGMA table_info(meta)")}
            if not ours:
                raise BadInputError(f"{self.path} is an SQLite database but not a dlcbench one (tables: {listing}); "
                                    "refusing to touch it")
        problems = [r[0] for r in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise BadInputError(f"{self.path} is damaged (quick_check: {one_line(problems[0], 160)}"
                                f"{f' and {len(problems) - 1} more problems' if len(problems) > 1 else ''}); "
                                "left untouched: restore it from a copy or use another --db")
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() if "meta" in tables else None
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise BadInputError(f"{self.path} has no readable dlcbench schema version (tables: {listing}); "
                                "left untouched") from None
        if version > SCHEMA_VERSION:
            raise BadInputError(
                f"{self.path} has results schema {version}, newer than this dlcbench's {SCHEMA_VERSION}; upgrade dlcbench"
            )
        if version < 1:
            raise BadInputError(f"{self.path} has an unknown results schema {version}; left untouched")
        return version, tables

    def _create(self, db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        for statement in _statements(_SCHEMA):
            db.execute(statement)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _upgrade(self, version: int, app_id: int, missing: list[str], backup: bool) -> None:
        """Brings an identified database to this schema, all in one transaction (nothing when it is current)."""
        if version == SCHEMA_VERSION and app_id == APPLICATION_ID and not missing:
            return
        def work(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row and row[0] == "1":  # read again under the lock: another process may have migrated it
                if backup:
                    self._keep_v1_copy()
                self._migrate_v1(db)
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            for statement in _statements(_SCHEMA):  # tables added since the file was written
                db.execute(statement)

        if self.readonly:  # the in-memory copy
            self._db.execute("BEGIN")
            try:
                work(self._db)
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise
        else:
            self._transact(work)

    def _keep_v1_copy(self) -> None:
        """Copies the schema-1 file to ``NAME.v1-backup`` (never overwritten), whole or not at all.

        Called holding the write lock before anything is changed, so the file on disk is a consistent snapshot.
        """
        copy = self.path.with_name(self.path.name + ".v1-backup")
        if copy.exists():
            return
        partial = copy.with_name(f".{copy.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(self.path, partial)
            os.replace(partial, copy)
        finally:
            partial.unlink(missing_ok=True)

    def _migrate_v1(self, db: sqlite3.Connection) -> None:
        """Schema 1 (one wide row per job) -> 2 (metrics in their own long table), inside the caller's transaction.

        An interrupted migration leaves the database as it was; the copy (``NAME.v1-backup``,
        never overwritten, made by the caller) is the schema-1 file byte for byte.
        """
        keep = ("id", "experiment", "job_key", "model", "backend", "target", "precision", "batch", "threads", "status",
                "category", "message", "check_metrics", "manifest", "config", "environment_id", "created")
        db.execute("ALTER TABLE results RENAME TO results_v1")
        db.execute(_RESULTS_TABLE)
        db.execute(_METRICS_TABLE)
        db.execute(f"INSERT INTO results ({', '.join(keep)}) SELECT {', '.join(keep)} FROM results_v1")
        for old in db.execute("SELECT * FROM results_v1").fetchall():
            self._insert_metrics(db, old["id"], _v1_metrics(dict(old)))
        db.execute("DROP TABLE results_v1")
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- writes

    def _transact(self, work: Callable[[sqlite3.Connection], T], wait: float | None = None) -> T:
        """Runs ``work(connection)`` as one transaction (all of it or none of it).

        Waits up to ``wait`` seconds (default: the store's timeout), with backoff, for another process's lock.

        Raises:
            StoreLockedError: the database stayed locked.
            BadInputError: the store is read-only, or the write failed (disk full, ...).
        """
        if self.readonly:
            raise BadInputError(f"{self.path} was opened read-only")
        wait = self.timeout if wait is None else wait
        deadline = time.monotonic() + wait
        delay = 0.05
        db = self._db
        while True:
            remaining = max(deadline - time.monotonic(), 0.0)
            try:
                db.execute(f"PRAGMA busy_timeout={int(remaining * 1000)}")  # SQLite's own waiting, with backoff
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as err:
                if _is_locked(err) and time.monotonic() < deadline:  # busy without waiting (lock upgrade)
                    time.sleep(min(delay, remaining))
                    delay = min(delay * 2, 2.0)
                    continue
                raise self._write_error(err, wait) from None
            try:
                result = work(db)
                db.commit()
                return result
            except sqlite3.OperationalError as err:
                db.rollback()
                raise self._write_error(err, wait) from None
            except BaseException:
                db.rollback()
                raise

    def _write_error(self, err: sqlite3.OperationalError, wait: float) -> BadInputError:
        if _is_locked(err):
            return StoreLockedError(f"{self.path} stayed locked by another process for {wait:g} s "
                                    f"(${WAIT_ENV} or --db-wait sets how long to wait)")
        return BadInputError(f"cannot write to {self.path}: {one_line(err, 200)}")

    def _write(self, sql: str, params: Iterable[Any]) -> sqlite3.Cursor:
        return self._transact(lambda db: db.execute(sql, tuple(params)))

    @staticmethod
    def _insert_metrics(db: sqlite3.Connection, result_id: int, metrics: Iterable[dict[str, Any]]) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO metrics (result_id, name, value, unit, samples, detail) VALUES (?, ?, ?, ?, ?, ?)",
            [(result_id, m["name"], _finite(m.get("value")), m["unit"],
              jsonio.dumps(m["samples"]) if m.get("samples") is not None else None,
              jsonio.dumps(m.get("detail") or {}, default=str)) for m in metrics],
        )

    def ensure_experiment(self, name: str, config: dict[str, Any]) -> None:
        """Creates the experiment if new (its first configuration is kept)."""
        self._write("INSERT OR IGNORE INTO experiments VALUES (?, ?, ?)",
                    (name, time.strftime("%Y-%m-%dT%H:%M:%S%z"), jsonio.dumps(config, default=str)))

    def add_environment(self, record: dict[str, Any]) -> int:
        """Stores an environment record once; returns its id."""
        return self._transact(lambda db: self._add_environment(db, record))

    @staticmethod
    def _add_environment(db: sqlite3.Connection, record: dict[str, Any]) -> int:
        text = jsonio.dumps(record, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()
        db.execute("INSERT OR IGNORE INTO environments (digest, record) VALUES (?, ?)", (digest, text))
        return db.execute("SELECT id FROM environments WHERE digest=?", (digest,)).fetchone()[0]

    def add_result(self, experiment: str, job_key: str, row: dict[str, Any], environment_id: int | None = None) -> None:
        """Inserts (or replaces) the row of one job and its metrics (``row["metrics"]``, dicts of
        :class:`dlcbench.measure.trackers.Metric`), and drops this process's claim on the job, in one transaction.

        Raises:
            StoreLockedError: another process kept the database locked (see :meth:`journal_result`).
        """
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")

        def write(db: sqlite3.Connection) -> None:
            self._write_result(db, experiment, job_key, row, environment_id, created)
            db.execute("DELETE FROM claims WHERE experiment=? AND job_key=? AND pid=? AND host=?",
                       (experiment, job_key, *self._me[:2]))

        self._transact(write)

    def add_results(self, experiment: str, config: dict[str, Any], environment: dict[str, Any],
                    rows: dict[str, dict[str, Any]]) -> int:
        """Stores a whole set of rows (``job_key -> row``) measured on one machine, all or nothing: the
        experiment (created if new), the environment record and every row in one transaction.

        Returns:
            The environment record's id.
        """
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")

        def write(db: sqlite3.Connection) -> int:
            db.execute("INSERT OR IGNORE INTO experiments VALUES (?, ?, ?)",
                       (experiment, created, jsonio.dumps(config, default=str)))
            env_id = self._add_environment(db, environment)
            for job_key, row in rows.items():
                self._write_result(db, experiment, job_key, row, env_id, created)
            return env_id

        return self._transact(write)

    def _write_result(self, db: sqlite3.Connection, experiment: str, job_key: str, row: dict[str, Any],
                      environment_id: int | None, created: str) -> None:
        fields = {c: row.get(c) for c in COLUMNS if c not in ("experiment", "created")}
        blob = {k: jsonio.dumps(row.get(k), default=str) if row.get(k) is not None else None for k in _JSON_COLUMNS}
        names = ["experiment", "job_key", *fields, *blob, "environment_id", "created"]
        values = [experiment, job_key, *fields.values(), *blob.values(), environment_id, created]
        db.execute("DELETE FROM metrics WHERE result_id IN (SELECT id FROM results WHERE experiment=? AND job_key=?)",
                   (experiment, job_key))
        cursor = db.execute(f"INSERT OR REPLACE INTO results ({', '.join(names)}) "
                            f"VALUES ({', '.join('?' * len(names))})", values)
        self._insert_metrics(db, cursor.lastrowid, row.get("metrics") or [])

    # ----------------------------------------------------------------- the journal of unwritten results

    def journal_result(self, experiment: str, job_key: str, row: dict[str, Any],
                       environment: dict[str, Any] | None = None,
                       experiment_config: dict[str, Any] | None = None) -> Path:
        """Keeps a finished job's row in ``NAME.pending/`` (written atomically) when the database cannot take it;
        the next store opened for writing imports it. Returns the file written.

        Raises:
            BadInputError: the journal could not be written either.
        """
        entry = {"format": 1, "experiment": experiment, "job_key": job_key, "row": row, "environment": environment,
                 "experiment_config": experiment_config or {}, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "pid": self._me[0], "host": self._me[1]}
        path = self.pending_dir / f"{_file_safe(experiment)}-{job_key}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.pending_dir.mkdir(exist_ok=True)
            with open(tmp, "w") as fh:
                fh.write(jsonio.dumps(entry, default=str))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise BadInputError(f"cannot keep the result of job {job_key} in {self.pending_dir}: "
                                f"{err.strerror}") from None
        return path

    def _import_pending(self) -> int:
        """Imports journaled results (in file-name order); returns how many; says so in one line."""
        if not self.pending_dir.is_dir():
            return 0
        imported = kept = 0
        for path in sorted(self.pending_dir.glob("*.json")):
            try:
                entry = json.loads(path.read_text())
                experiment, job_key, row = entry["experiment"], entry["job_key"], entry["row"]
                created = entry["created"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                self._say(f"warning: {path} is not a readable journal entry ({one_line(err, 120)}); left in place")
                continue

            def work(db: sqlite3.Connection) -> bool:
                existing = db.execute("SELECT created FROM results WHERE experiment=? AND job_key=?",
                                      (experiment, job_key)).fetchone()
                db.execute("DELETE FROM claims WHERE experiment=? AND job_key=? AND pid=? AND host=?",
                           (experiment, job_key, entry.get("pid"), entry.get("host")))
                if existing and existing[0] > created:  # a later run recorded the job again
                    return False
                db.execute("INSERT OR IGNORE INTO experiments VALUES (?, ?, ?)",
                           (experiment, created, jsonio.dumps(entry.get("experiment_config") or {}, default=str)))
                env_id = self._add_environment(db, entry["environment"]) if entry.get("environment") else None
                self._write_result(db, experiment, job_key, row, env_id, created)
                return True

            if self._transact(work):
                imported += 1
            else:
                kept += 1
            path.unlink()
        try:
            self.pending_dir.rmdir()
        except OSError:
            pass
        if imported or kept:
            newer = f" ({kept} superseded by newer rows)" if kept else ""
            self._say(f"{self.path}: imported {imported} result(s) journaled in {self.pending_dir} "
                      f"while the database was locked{newer}")
        return imported

    # ----------------------------------------------------------------- claims

    def claim(self, experiment: str, job_key: str, skip_statuses: Collection[str] = ()) -> Refusal | None:
        """Claims a job for this process, in one transaction.

        Returns:
            None when the job is this process's to run; otherwise a :class:`Refusal`: another live run holds it
            (``held``), or (``skip_statuses``) a row with one of those statuses was recorded meanwhile
            (``recorded``). A claim left by a process that is gone (same host) is taken over, with a notice.
        """
        pid, host, start = self._me

        def work(db: sqlite3.Connection) -> Refusal | None:
            if skip_statuses:
                row = db.execute("SELECT status FROM results WHERE experiment=? AND job_key=?",
                                 (experiment, job_key)).fetchone()
                if row and row[0] in skip_statuses:
                    return Refusal("recorded", f"recorded meanwhile ({row[0]}) by another run")
            held = db.execute("SELECT pid, host, process_start, started FROM claims WHERE experiment=? AND job_key=?",
                              (experiment, job_key)).fetchone()
            if held and (held["pid"], held["host"]) != (pid, host):
                if _alive(held["pid"], held["host"], held["process_start"]):
                    return Refusal("held", f"held by another run (pid {held['pid']} on {held['host']}, "
                                           f"since {held['started']})")
                self._say(f"note: taking over job {job_key} from pid {held['pid']} on {held['host']}, which is gone")
            db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)",
                       (experiment, job_key, pid, host, start, time.strftime("%Y-%m-%dT%H:%M:%S%z")))
            return None

        return self._transact(work)

    def release_claims(self, wait: float = 2.0) -> None:
        """Drops every claim of this process (best effort: a locked database keeps them, and they go stale)."""
        try:
            self._transact(lambda db: db.execute("DELETE FROM claims WHERE pid=? AND host=?", self._me[:2]), wait)
        except BadInputError:
            pass

    def claims(self, experiment: str) -> list[dict[str, Any]]:
        """The claims of ``experiment`` (jobs some run is running, or was when it died)."""
        return [dict(r) for r in self._query("SELECT * FROM claims WHERE experiment=? ORDER BY started",
                                             (experiment,))]

    def add_coverage(self, run: str, row: dict[str, Any], environment_id: int | None = None) -> None:
        """Inserts (or replaces) the outcome of one ONNX node test on one backend."""
        values = {c: row.get(c) for c in COVERAGE_COLUMNS}
        values.update(run=run, environment_id=environment_id, expanded=int(bool(row.get("expanded"))),
                      created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if values["message"] is not None:
            values["message"] = one_line(values["message"], 1000)
        self._write(f"INSERT OR REPLACE INTO coverage ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                    values.values())

    # ----------------------------------------------------------------- reads

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Runs a read; a database error (locked for longer than the timeout, damage found late) is one line."""
        try:
            return self._db.execute(sql, tuple(params)).fetchall()
        except sqlite3.DatabaseError as err:
            raise BadInputError(f"cannot read {self.path}: {one_line(err, 200)}") from None

    def coverage_runs(self) -> list[str]:
        return [r[0] for r in self._query("SELECT run FROM coverage GROUP BY run ORDER BY MIN(id)")]

    def coverage(self, run: str) -> list[dict[str, Any]]:
        """Rows of a coverage run, ordered by test then backend (empty for an unknown run)."""
        return [dict(r) for r in self._query("SELECT * FROM coverage WHERE run=? ORDER BY test, backend", (run,))]

    def coverage_done(self, run: str, backend: str) -> set[str]:
        """Node tests already recorded for ``backend`` in ``run``."""
        return {r[0] for r in self._query("SELECT test FROM coverage WHERE run=? AND backend=?", (run, backend))}

    def experiments(self) -> list[str]:
        return [r[0] for r in self._query("SELECT name FROM experiments ORDER BY created, name")]

    def done_keys(self, experiment: str, statuses: Collection[str] | None = None) -> set[str]:
        """Job keys already recorded for ``experiment`` (only rows with one of ``statuses`` when given)."""
        rows = self._query("SELECT job_key, status FROM results WHERE experiment=?", (experiment,))
        return {r[0] for r in rows if statuses is None or r[1] in statuses}

    def results(self, experiment: str) -> list[dict[str, Any]]:
        """Rows of an experiment, JSON columns decoded.

        Raises:
            BadInputError: no such experiment (the message lists the known ones).
        """
        if experiment not in self.experiments():
            known = ", ".join(self.experiments()) or "none yet"
            raise BadInputError(f"no experiment {experiment!r} in {self.path}; known: {known}")
        rows = []
        for r in self._query("SELECT * FROM results WHERE experiment=? ORDER BY id", (experiment,)):
            row = dict(r)
            for key in _JSON_COLUMNS:
                row[key] = json.loads(row[key]) if row[key] else None
            row["metrics"] = {}
            rows.append(row)
        by_id = {row["id"]: row for row in rows}
        for m in self._query("SELECT m.* FROM metrics m JOIN results r ON r.id = m.result_id "
                                  "WHERE r.experiment=?", (experiment,)):
            by_id[m["result_id"]]["metrics"][m["name"]] = {
                "value": m["value"], "unit": m["unit"], "samples": json.loads(m["samples"]) if m["samples"] else None,
                "detail": json.loads(m["detail"]) if m["detail"] else {}}
        return rows

    def environment(self, env_id: int) -> dict[str, Any]:
        row = next(iter(self._query("SELECT record FROM environments WHERE id=?", (env_id,))), None)
        return json.loads(row[0]) if row else {}

    # ----------------------------------------------------------------- exports

    def export(self, experiment: str, fmt: str) -> str:
        """The experiment as ``csv`` or ``md`` (one column per metric found) or ``json`` (full rows)."""
        results = self.results(experiment)
        if fmt == "json":
            return jsonio.dumps(results, indent=2, default=str)
        columns, rows = flat_table(results)
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
            return buf.getvalue()
        if fmt == "md":
            sweep = len({row["threads"] for row in rows}) > 1  # threads shown only where they differ
            cols = [c for c in columns if c not in ("experiment", "message", "created") and (sweep or c != "threads")]
            lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for row in rows:
                cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else ("" if row[c] is None else str(row[c])) for c in cols]
                lines.append("| " + " | ".join(cells) + " |")
            return "\n".join(lines) + "\n"
        raise BadInputError(f"unknown export format {fmt!r}; valid: csv, json, md")


#: Statistics of a latency metric that get their own column in flat exports: column suffix -> (detail key, scale).
#: ``cv_pct`` is std / mean and ``spread_pct`` (p90 - p10) / median, both in percent; ``unstable`` is read from
#: the spread (rows stored before the spread existed keep their cv-based flag).
_LATENCY_COLUMNS = {"p90_ms": ("p90_ms", 1), "spread_pct": ("spread", 100), "cv_pct": ("cv", 100),
                    "unstable": ("unstable", None), "round_spread_pct": ("round_spread", 100)}
#: Columns shown only when some row has them (``round_spread``: interleaved rounds, (max - min) round median /
#: median, in percent).
_OPTIONAL_LATENCY_COLUMNS = ("round_spread_pct",)


def _latency_column(metric: dict[str, Any] | None, suffix: str) -> Any:
    key, scale = _LATENCY_COLUMNS[suffix]
    value = metric["detail"].get(key) if metric else None
    return value * scale if scale and isinstance(value, (int, float)) and not isinstance(value, bool) else value


def flat_table(results: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows of :meth:`ResultsStore.results` as flat dicts: identity columns, then ``NAME_UNIT`` per metric found
    (and a latency's p90, spread and cv in percent, stability flag), in tracker registration order."""
    from dlcbench.measure.trackers import trackers

    order = list(trackers())
    found: dict[str, str] = {}
    for r in results:
        for name, m in r["metrics"].items():
            found.setdefault(name, m["unit"])
    names = sorted(found, key=lambda n: (order.index(n) if n in order else len(order), n))
    shown = [k for k in _LATENCY_COLUMNS if k not in _OPTIONAL_LATENCY_COLUMNS or any(
        _LATENCY_COLUMNS[k][0] in (m.get("detail") or {}) for r in results for m in r["metrics"].values())]
    columns = list(COLUMNS)
    for name in names:
        columns.append(f"{name}_{found[name]}")
        if name.startswith("latency"):
            columns += [f"{name}_{k}" for k in shown]
    rows = []
    for r in results:
        flat = {c: r.get(c) for c in COLUMNS}
        for name in names:
            m = r["metrics"].get(name)
            flat[f"{name}_{found[name]}"] = m["value"] if m else None
            if name.startswith("latency"):
                flat.update({f"{name}_{k}": _latency_column(m, k) for k in shown})
        rows.append(flat)
    return columns, rows


def _finite(value: Any) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _v1_metrics(old: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics a schema-1 row held in its columns."""
    from dlcbench.measure.trackers import Metric, latency_metric

    stats = json.loads(old["stats"]) if old.get("stats") else {}
    samples = json.loads(old["samples"]) if old.get("samples") else []
    native = json.loads(old["native"]) if old.get("native") else None
    metrics = []
    if old.get("median_ms") is not None:
        if samples and stats:
            metrics.append(latency_metric("latency", samples, stats, clock="host"))
        else:
            metrics.append(Metric("latency", old["median_ms"], "ms", None, {"p90_ms": old.get("p90_ms"),
                                                                             "cv": old.get("cv")}))
    if native and native.get("stats"):
        metrics.append(latency_metric("latency_native", native.get("samples_s") or [], native["stats"],
                                      timer=native.get("timer"), host_over_native=native.get("host_over_native")))
    for name, column, unit in (("compile_time", "compile_seconds", "s"), ("tuning_time", "tuning_seconds", "s"),
                               ("artifact_size", "artifact_bytes", "bytes"), ("peak_rss", "peak_rss_mb", "MiB"),
                               ("flops", "flops", "FLOP")):
        if old.get(column) is not None:
            metrics.append(Metric(name, float(old[column]), unit))
    if stats.get("parameters") is not None:
        metrics.append(Metric("parameters", float(stats["parameters"]), "count"))
    return [m.to_dict() for m in metrics]


def default_wait() -> float:
    """Seconds a write waits for another process's lock: ``$DLCBENCH_DB_WAIT`` or :data:`DEFAULT_WAIT_S`.

    Raises:
        BadInputError: the variable is not a number of seconds.
    """
    text = os.environ.get(WAIT_ENV, "").strip()
    if not text:
        return DEFAULT_WAIT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise BadInputError(f"${WAIT_ENV} must be a number of seconds >= 0, got {text!r}")
    return value


def _statements(script: str) -> list[str]:
    """The SQL statements of a script (executescript would commit the caller's transaction)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return statements


def _is_locked(err: sqlite3.OperationalError) -> bool:
    return getattr(err, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(err)


def _file_safe(name: str) -> str:
    """``name`` usable in a file name; a digest keeps two names that differ only in odd characters apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]
    return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _alive(pid: int, host: str, start: str | None) -> bool:
    """Whether the process that made a claim still runs (a claim from another host is assumed live)."""
    return host != socket.gethostname() or process_alive(pid, start)
