"""The results store: an embedded SQLite database, one row per job.

Every write is one transaction, so an interrupted run never leaves a half
row, and a file that is not a dlcbench database is refused before any write.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from dlcbench.errors import BadInputError, one_line

SCHEMA_VERSION = 1
DEFAULT_DB = Path("results") / "dlcbench.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS environments (
    id INTEGER PRIMARY KEY, digest TEXT UNIQUE NOT NULL, record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT PRIMARY KEY, created TEXT NOT NULL, config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    experiment TEXT NOT NULL REFERENCES experiments(name),
    job_key TEXT NOT NULL,
    model TEXT NOT NULL, backend TEXT NOT NULL, target TEXT NOT NULL, precision TEXT NOT NULL,
    batch INTEGER NOT NULL, threads INTEGER NOT NULL,
    status TEXT NOT NULL,              -- ok | failed
    category TEXT,                     -- NULL when ok; unavailable, export_error, compile_error, ...
    message TEXT,
    median_ms REAL, p90_ms REAL, mean_ms REAL, std_ms REAL, cv REAL, unstable INTEGER,
    throughput REAL, native_median_ms REAL,
    compile_seconds REAL, tuning_seconds REAL, artifact_bytes INTEGER, peak_rss_mb REAL,
    flops INTEGER,
    stats TEXT, samples TEXT, native TEXT, check_metrics TEXT, manifest TEXT, config TEXT,
    environment_id INTEGER REFERENCES environments(id),
    created TEXT NOT NULL,
    UNIQUE (experiment, job_key)
);
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

COVERAGE_COLUMNS = ("run", "test", "op", "domain", "opset", "expanded", "backend", "backend_version", "status",
                    "message", "max_abs_err", "seconds", "environment_id", "created")

COLUMNS = ("experiment", "model", "backend", "target", "precision", "batch", "threads", "status", "category",
           "message", "median_ms", "p90_ms", "mean_ms", "std_ms", "cv", "unstable", "throughput",
           "native_median_ms", "compile_seconds", "tuning_seconds", "artifact_bytes", "peak_rss_mb", "flops", "created")


class ResultsStore:
    """A dlcbench results database (created on first use).

    Raises:
        BadInputError: the file is not an SQLite database, is locked, or has a newer schema.
    """

    def __init__(self, path: Path | str = DEFAULT_DB, timeout: float = 10.0):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BadInputError(f"cannot create results directory {self.path.parent}: {err.strerror}") from None
        try:
            self._db = sqlite3.connect(str(self.path), timeout=timeout)
            self._db.row_factory = sqlite3.Row
            self._init_schema()
        except sqlite3.DatabaseError as err:
            raise BadInputError(f"{self.path} is not usable as a results database: {one_line(err, 200)}") from None

    def _init_schema(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise BadInputError(f"{self.path} is an SQLite database but not a dlcbench one (tables: {', '.join(sorted(tables))})")
        if "meta" in tables:
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise BadInputError(
                    f"{self.path} has results schema {version}, newer than this dlcbench's {SCHEMA_VERSION}; upgrade dlcbench"
                )
        with self._db:
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- writes

    def _write(self, sql: str, params: Iterable[Any]) -> sqlite3.Cursor:
        try:
            with self._db:
                return self._db.execute(sql, tuple(params))
        except sqlite3.OperationalError as err:
            raise BadInputError(f"cannot write to {self.path}: {one_line(err, 200)}") from None

    def ensure_experiment(self, name: str, config: dict[str, Any]) -> None:
        """Creates the experiment if new (its first configuration is kept)."""
        self._write("INSERT OR IGNORE INTO experiments VALUES (?, ?, ?)",
                    (name, time.strftime("%Y-%m-%dT%H:%M:%S%z"), json.dumps(config, default=str)))

    def add_environment(self, record: dict[str, Any]) -> int:
        """Stores an environment record once; returns its id."""
        text = json.dumps(record, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()
        self._write("INSERT OR IGNORE INTO environments (digest, record) VALUES (?, ?)", (digest, text))
        return self._db.execute("SELECT id FROM environments WHERE digest=?", (digest,)).fetchone()[0]

    def add_result(self, experiment: str, job_key: str, row: dict[str, Any], environment_id: int | None = None) -> None:
        """Inserts (or replaces) the row of one job."""
        blob = {k: json.dumps(row.get(k), default=str) if row.get(k) is not None else None
                for k in ("stats", "samples", "native", "check_metrics", "manifest", "config")}
        fields = {c: row.get(c) for c in COLUMNS if c not in ("experiment", "created")}
        fields["unstable"] = int(bool(fields.get("unstable"))) if fields.get("unstable") is not None else None
        names = ["experiment", "job_key", *fields, *blob, "environment_id", "created"]
        values = [experiment, job_key, *fields.values(), *blob.values(), environment_id,
                  time.strftime("%Y-%m-%dT%H:%M:%S%z")]
        self._write(f"INSERT OR REPLACE INTO results ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values)

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

    def coverage_runs(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT run FROM coverage GROUP BY run ORDER BY MIN(id)")]

    def coverage(self, run: str) -> list[dict[str, Any]]:
        """Rows of a coverage run, ordered by test then backend (empty for an unknown run)."""
        return [dict(r) for r in self._db.execute("SELECT * FROM coverage WHERE run=? ORDER BY test, backend", (run,))]

    def coverage_done(self, run: str, backend: str) -> set[str]:
        """Node tests already recorded for ``backend`` in ``run``."""
        return {r[0] for r in self._db.execute("SELECT test FROM coverage WHERE run=? AND backend=?", (run, backend))}

    def experiments(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM experiments ORDER BY created, name")]

    def done_keys(self, experiment: str) -> set[str]:
        """Job keys already recorded for ``experiment``."""
        return {r[0] for r in self._db.execute("SELECT job_key FROM results WHERE experiment=?", (experiment,))}

    def results(self, experiment: str) -> list[dict[str, Any]]:
        """Rows of an experiment, JSON columns decoded.

        Raises:
            BadInputError: no such experiment (the message lists the known ones).
        """
        if experiment not in self.experiments():
            known = ", ".join(self.experiments()) or "none yet"
            raise BadInputError(f"no experiment {experiment!r} in {self.path}; known: {known}")
        rows = []
        for r in self._db.execute("SELECT * FROM results WHERE experiment=? ORDER BY id", (experiment,)):
            row = dict(r)
            for key in ("stats", "samples", "native", "check_metrics", "manifest", "config"):
                row[key] = json.loads(row[key]) if row[key] else None
            rows.append(row)
        return rows

    def environment(self, env_id: int) -> dict[str, Any]:
        row = self._db.execute("SELECT record FROM environments WHERE id=?", (env_id,)).fetchone()
        return json.loads(row[0]) if row else {}

    # ----------------------------------------------------------------- exports

    def export(self, experiment: str, fmt: str) -> str:
        """The experiment's flat columns as ``csv``, ``json`` or ``md`` text."""
        rows = [{c: r.get(c) for c in COLUMNS} for r in self.results(experiment)]
        if fmt == "json":
            return json.dumps(self.results(experiment), indent=2, default=str)
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
            return buf.getvalue()
        if fmt == "md":
            cols = ["model", "backend", "target", "precision", "batch", "status", "category", "median_ms", "p90_ms",
                    "cv", "compile_seconds"]
            lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for row in rows:
                cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else ("" if row[c] is None else str(row[c])) for c in cols]
                lines.append("| " + " | ".join(cells) + " |")
            return "\n".join(lines) + "\n"
        raise BadInputError(f"unknown export format {fmt!r}; valid: csv, json, md")
