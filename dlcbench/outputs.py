"""Directories dlcbench writes: never replace what dlcbench did not write, and publish them whole.

The rule, for every command that writes a directory (artifacts, tuning runs, reports, stages):

* An existing directory is replaced only when it is empty, or holds output of the same kind that
  dlcbench wrote (recognised by :data:`MARKER` or the kind's own index file) and nothing else.
  Otherwise :class:`~dlcbench.errors.BadInputError` (exit 2) says why, and nothing is touched.
* New output is written into a hidden sibling directory (same parent) and renamed into place when
  complete, so an interrupted run never leaves half an output under the final name. The sibling is
  removed on failure, Ctrl-C or SIGTERM; one left by a process killed outright (SIGKILL: its name
  carries host and process id) is removed by the next dlcbench run that writes the same output
  (:func:`remove_stale_siblings` does it on demand, e.g. after a launcher killed a worker).

Imports only the standard library, :mod:`dlcbench.errors` and :mod:`dlcbench.processes`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from dlcbench.errors import BadInputError
from dlcbench.processes import process_alive

#: Written into every published output directory: its kind and every entry dlcbench wrote.
MARKER = ".dlcbench-output.json"

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TAG = re.compile(r"-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$")
_SHOWN = 3  # entries named in a refusal


@dataclass(frozen=True)
class Owned:
    """What dlcbench wrote in a directory: entries (relative, directories ending in ``/``) and whole subtrees."""

    entries: frozenset[str] = frozenset()
    trees: frozenset[str] = frozenset()

    def __contains__(self, rel: str) -> bool:
        if rel in self.entries:
            return True
        bare = rel.rstrip("/")
        return any(bare == t or bare.startswith(t + "/") for t in self.trees)

    def __or__(self, other: "Owned") -> "Owned":
        return Owned(self.entries | other.entries, self.trees | other.trees)

    @classmethod
    def of_files(cls, files) -> "Owned":
        """The relative file paths ``files`` and the directories on their way."""
        owned = set()
        for rel in files:
            parts = str(rel).strip("/").split("/")
            owned.add("/".join(parts))
            owned.update("/".join(parts[:i]) + "/" for i in range(1, len(parts)))
        return cls(frozenset(owned))


@dataclass(frozen=True)
class OutputKind:
    """A kind of directory dlcbench writes.

    Attributes:
        name: Short name recorded in the marker (``artifact``, ``report``).
        label: How messages name it (``a dlcbench artifact``).
        later: Files dlcbench may add after publishing (``result.json``).
        recognise: Recognises such a directory without a marker (a stage's ``stage.json``,
            an artifact's ``manifest.json``): returns what dlcbench wrote there, or None.
        marker: Write :data:`MARKER` when publishing (off for stages, whose index lists every file).
    """

    name: str
    label: str
    later: frozenset[str] = frozenset()
    recognise: Callable[[Path], Owned | None] | None = None
    marker: bool = True


# --------------------------------------------------------------------------- temporary names


def temp_name(prefix: str) -> str:
    """``PREFIX`` + host, process id and a random tag: who made it, so a dead process's leftovers can go."""
    return f"{prefix}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """Creates ``parent/temp_name(prefix)`` with the usual permissions (``mkdtemp`` would make it private)."""
    path = Path(parent) / temp_name(prefix)
    os.mkdir(path)
    return path


def is_stale(name: str, prefix: str) -> bool:
    """Whether ``name`` is a :func:`temp_name` of ``prefix`` made on this host by a process that is gone."""
    if not name.startswith(prefix):
        return False
    tag = _TAG.search(name[len(prefix) - 1:])  # the tag ends the name; what precedes it may hold dashes
    return bool(tag) and tag["host"] == _HOST and not process_alive(int(tag["pid"]))


def remove_stale(parent: Path, *prefixes: str) -> list[Path]:
    """Removes the temporary directories of dead processes in ``parent``; returns them."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if any(is_stale(name, p) for p in prefixes):
            path = Path(parent) / name
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _sibling_prefixes(final: Path) -> tuple[str, str]:
    stem = final.name[:100]  # room for the tag within the 255-byte name limit
    return f".{stem}.dlcbench-tmp-", f".{stem}.dlcbench-old-"


def remove_stale_siblings(path: Path) -> list[Path]:
    """Removes what killed dlcbench processes left next to output ``path`` (partial or set-aside copies)."""
    final = Path(path).resolve()
    return remove_stale(final.parent, *_sibling_prefixes(final))


# --------------------------------------------------------------------------- termination

_doomed: list[Path] = []  # removed before a SIGTERM ends this process


def _on_sigterm(signum, frame) -> None:
    for path in list(_doomed):
        shutil.rmtree(path, ignore_errors=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)  # then end as SIGTERM ends a process


def remove_on_sigterm(path: Path) -> None:
    """Removes directory ``path`` if a SIGTERM ends this process before :func:`forget_on_sigterm`.

    Only where SIGTERM would end the process outright (its default action, as in a worker process
    that a launcher stops); a program with its own SIGTERM handler, such as
    :func:`dlcbench.errors.run_cli`'s, unwinds through the ``finally`` blocks that remove ``path``.
    """
    _doomed.append(Path(path))
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def forget_on_sigterm(path: Path) -> None:
    """Undoes :func:`remove_on_sigterm` for ``path``."""
    if Path(path) in _doomed:
        _doomed.remove(Path(path))
    if (not _doomed and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is _on_sigterm):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# --------------------------------------------------------------------------- recognising output


def entries(directory: Path) -> set[str]:
    """Every entry under ``directory``, relative, directories ending in ``/``; symbolic links not followed."""
    found: set[str] = set()

    def walk(path: Path, rel: str) -> None:
        with os.scandir(path) as it:
            for entry in it:
                name = f"{rel}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    found.add(name + "/")
                    walk(Path(entry.path), name + "/")
                else:
                    found.add(name)

    walk(Path(directory), "")
    return found


def read_marker(directory: Path) -> dict | None:
    """The :data:`MARKER` of ``directory`` (``kind``, ``entries``), or None when absent or unreadable."""
    try:
        data = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str) or not isinstance(data.get("entries"), list):
        return None
    return data


def _listing(names: list[str] | set[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _writable_parent(path: Path, written: str) -> None:
    """Refuses when ``path`` cannot be created: its nearest existing ancestor is not a writable directory.

    ``written`` names what is refused in the message: "cannot write WRITTEN: ...".
    """
    ancestor = path.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise BadInputError(f"cannot write {written}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write {written}: {ancestor} is not writable")


def check_replaceable(path: Path, kind: OutputKind) -> Path:
    """Checks that dlcbench may write ``kind`` at ``path``; returns the resolved path. Touches nothing.

    Allowed: a path that does not exist (its parent can be created), an empty directory, or a
    directory holding ``kind`` written by dlcbench and nothing else.

    Raises:
        BadInputError: anything else, saying why.
    """
    shown = Path(path)
    try:
        final = shown.resolve()
    except (OSError, RuntimeError) as err:  # a symbolic-link loop
        raise BadInputError(f"cannot write output directory {shown}: {err}") from None
    if final == final.parent:
        raise BadInputError(f"refusing to write {kind.label} over the root directory {shown}")
    try:
        exists = os.path.lexists(final)
    except OSError:
        exists = False
    if not exists:
        _writable_parent(final, f"output directory {shown}")
        return final
    if not final.is_dir():
        raise BadInputError(f"{shown} exists and is not a directory; dlcbench writes {kind.label} only as a new directory")
    try:
        top = os.listdir(final)
    except OSError as err:
        raise BadInputError(f"cannot read output directory {shown}: {err.strerror}") from None
    if not top:
        _writable_parent(final, f"output directory {shown}")
        return final
    marker = read_marker(final)
    if marker and marker["kind"] != kind.name:
        raise BadInputError(f"{shown} holds a dlcbench {marker['kind']}, not {kind.label}; choose another directory")
    owned = None
    if marker:
        owned = Owned(frozenset(str(e) for e in marker["entries"]) | {MARKER})
    recognised = kind.recognise(final) if kind.recognise else None
    if recognised is not None:
        owned = recognised if owned is None else owned | recognised
    if owned is None:
        raise BadInputError(
            f"{shown} already exists and is not {kind.label} (it holds {_listing(top)}); dlcbench replaces only "
            "a directory it wrote: choose a new or empty directory")
    owned = owned | Owned(kind.later)
    try:
        foreign = {e for e in entries(final) if e not in owned}
    except OSError as err:
        raise BadInputError(f"cannot read output directory {shown}: {err.strerror}") from None
    # A directory is foreign only through what it holds: name the top-most foreign entries.
    foreign = {e for e in foreign if not any(e != f and e.startswith(f) for f in foreign if f.endswith("/"))}
    if foreign:
        raise BadInputError(
            f"{shown} holds {kind.label} but also {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} dlcbench "
            f"did not write ({_listing(foreign)}); not replacing it: remove them or choose another directory")
    _writable_parent(final, f"output directory {shown}")
    return final


# --------------------------------------------------------------------------- writing output


def write_marker(directory: Path, kind: OutputKind) -> None:
    """Records ``kind`` and every entry now in ``directory`` in its :data:`MARKER`."""
    listed = sorted(entries(directory) - {MARKER})
    (Path(directory) / MARKER).write_text(json.dumps({"kind": kind.name, "entries": listed}, indent=1))


def swap_in(new: Path, final: Path, aside_prefix: str) -> None:
    """Renames directory ``new`` to ``final``; an existing ``final`` is renamed aside first, then deleted.

    Readers see the old directory or the new one, never a mix. On failure the old one is put back.
    """
    aside = None
    if os.path.lexists(final):
        aside = final.parent / temp_name(aside_prefix)
        os.rename(final, aside)
    try:
        os.rename(new, final)
    except OSError:
        if aside is not None:
            try:
                os.rename(aside, final)
            except OSError:
                pass
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


class StagedOutput:
    """A hidden sibling of an output path to write into, published as that path by :meth:`publish`.

    Creating one checks the path with :func:`check_replaceable` (and creates its parent); :meth:`publish`
    checks again, since the path may have changed while the output was written, then renames the
    sibling into place; :meth:`discard` removes the sibling (a no-op once published).

    Raises:
        BadInputError: the path may not be replaced or cannot be written.
    """

    def __init__(self, path: Path, kind: OutputKind):
        self.path, self.kind = Path(path), kind
        self.final = check_replaceable(self.path, kind)
        self._tmp_prefix, self._old_prefix = _sibling_prefixes(self.final)
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(self.final.parent, self._tmp_prefix, self._old_prefix)
            #: The directory to write the output into.
            self.directory = make_temp_dir(self.final.parent, self._tmp_prefix)
        except OSError as err:
            raise BadInputError(f"cannot write output directory {self.path}: {err.strerror}") from None
        remove_on_sigterm(self.directory)

    def publish(self) -> Path:
        """Writes the marker and renames the staged directory into place; returns the resolved final path."""
        if self.kind.marker:
            write_marker(self.directory, self.kind)
        check_replaceable(self.path, self.kind)
        try:
            swap_in(self.directory, self.final, self._old_prefix)
        except OSError as err:
            raise BadInputError(f"cannot write output directory {self.path}: {err.strerror}") from None
        forget_on_sigterm(self.directory)
        return self.final

    def discard(self) -> None:
        """Removes the staged directory if it is still there."""
        if os.path.lexists(self.directory):
            shutil.rmtree(self.directory, ignore_errors=True)
        forget_on_sigterm(self.directory)


@contextmanager
def staged_output(path: Path, kind: OutputKind) -> Iterator[Path]:
    """Yields a fresh hidden sibling of ``path`` to write ``kind`` into; publishes it as ``path`` on success.

    See :class:`StagedOutput`. On an exception (``KeyboardInterrupt`` included) the sibling is
    removed and ``path`` is left as it was.

    Raises:
        BadInputError: ``path`` may not be replaced or cannot be written.
    """
    staged = StagedOutput(path, kind)
    try:
        yield staged.directory
        staged.publish()
    finally:
        staged.discard()


# --------------------------------------------------------------------------- single files a user names


def check_file_replaceable(path: Path, ours: re.Pattern, what: str) -> Path:
    """Checks that dlcbench may write the file ``path`` (a Markdown table a user named); touches nothing.

    Allowed: a path that does not exist (its parent can be created), an empty file, or a file whose first line
    matches ``ours`` (one dlcbench wrote, such as an earlier run's table).

    Raises:
        BadInputError: a directory, or a file that is neither empty nor dlcbench's, saying why.
    """
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"cannot write {what} to {path}: it is a directory; give a file path")
    if os.path.lexists(path):
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                first = file.readline().rstrip("\n")
            empty = os.path.getsize(path) == 0
        except OSError as err:
            raise BadInputError(f"cannot write {what} to {path}: {err.strerror}") from None
        if not empty and not ours.match(first):
            raise BadInputError(f"refusing to overwrite {path}: it is not {what} dlcbench wrote (its first line is "
                                f"{first[:60]!r}); give another path, or move it away")
    _writable_parent(path, f"{what} to {path}")
    return path


def write_file_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to a hidden sibling of ``path`` and renames it into place: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / temp_name(f".{path.name}.tmp-")
    try:
        temp.write_text(text)
        os.replace(temp, path)
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)
