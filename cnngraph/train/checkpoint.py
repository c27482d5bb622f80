"""Atomic, code-free checkpoints: a directory of ``.npz`` arrays plus ``meta.json``.

Layout of a checkpoint directory::

    meta.json                      {"format": "cnngraph-checkpoint", "version": 1,
                                    "files": {"weights":   {"name", "sha256", "bytes"},
                                              "optimizer": {...}},   # only if saved
                                    "meta": <the caller's meta>}
    weights-<sha256[:16]>.npz      model arrays (NumPy .npz, no pickles)
    optimizer-<sha256[:16]>.npz    optimizer state, flat "name/slot" arrays

Why the data files carry their hash in the name: ``meta.json`` is the single commit
point. New data files never overwrite the ones the current ``meta.json`` names, and
``meta.json`` itself is replaced atomically (temp file, fsync, ``os.replace``, directory
fsync) only after they are durable. So a crash at any moment of a save leaves the
previous checkpoint complete and loadable; files left by an interrupted save are ignored
and removed by the next successful save. A save holds a lock on its directory
(:func:`~cnngraph.train.runlock.folder_lock`), so concurrent saves into one folder, from threads
or processes, run one after the other instead of deleting each other's files. Loading reads no
code (``allow_pickle=False``) and verifies every file's sha256 against ``meta.json``, so files from
two different saves or a truncated copy are reported as a :class:`CheckpointError`, never loaded
silently.

Finding and reading weights: :func:`resolve_checkpoint` turns whatever a user passes (a run
folder, its ``checkpoint/`` folder, a ``best/`` or ``last/`` checkpoint) into the checkpoint
directory, and :func:`load_weights` reads parameters from that or from a plain ``.npz``; every
command and API that takes a checkpoint or parameter path goes through these two.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
import warnings
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..arrayfile import array_file_kind, load_arrays
from ..backend import to_numpy
from ..errors import CheckpointError
from .runlock import folder_lock

__all__ = [
    "CheckpointWriter",
    "Checkpoint", "save_checkpoint", "load_checkpoint", "atomic_write", "fsync_dir", "read_meta",
    "resolve_checkpoint", "run_folder", "holds_run", "load_weights", "trained_from",
    "rng_state_to_json", "rng_state_from_json",
    "META_FILE", "FORMAT", "FORMAT_VERSION",
]

META_FILE = "meta.json"
FORMAT = "cnngraph-checkpoint"
FORMAT_VERSION = 1
_PARTS = ("weights", "optimizer")
_DATA_NAME = re.compile(r"^(weights|optimizer)-[0-9a-f]{16}\.npz$")
_TEMP_NAME = re.compile(r"^\.(weights|optimizer|meta)-.*\.tmp$")


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    arrays: dict[str, np.ndarray]
    meta: dict
    optimizer_state: dict[str, np.ndarray] | None = None


# --- saving --------------------------------------------------------------------------

def _file_mode() -> int:
    try:   # Linux says it without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()   # what open() would give a new file under this process's umask


class CheckpointWriter:
    """Runs checkpoint saves on a background thread, one at a time, so training goes on while a
    save serialises and fsyncs (about 6 ms per save here, mostly fsync, which releases the GIL).

    ``submit`` first waits for the previous save; ``wait`` blocks until the pending save is on disk
    and re-raises its error. Callers pass snapshots (copies) of the arrays, never live buffers.
    The thread is one per process, started once: starting a thread per save took 1.8 ms while training
    kept both cores busy (36 of the 1.1 s of the digits training).
    """

    def __init__(self):
        self._pending: Future | None = None
        self.done: Any = None          # the ``tag`` of the newest save that completed

    def submit(self, saves, tag=None) -> None:
        """Start ``saves`` (a list of (directory, arrays, meta, optimizer_state)) in order."""
        self.wait()

        def run():
            previous = None   # a save of the same snapshot (best/ and last/ of an improved epoch) links its files
            for directory, arrays, meta, optimizer_state in saves:
                same = previous if previous and previous[1] is arrays and previous[2] is optimizer_state else None
                files = save_checkpoint(directory, arrays, meta, optimizer_state,
                                        same_as=None if same is None else (same[0], same[3]))
                previous = (directory, arrays, optimizer_state, files)
            self.done = tag

        self._pending = _writer_thread().submit(run)

    def wait(self) -> None:
        pending = self._pending
        if pending is None:
            return
        try:
            pending.result()
        except BaseException as exc:
            # the save's own failure is reported once; on Ctrl-C while waiting (the save goes on, or has just
            # failed) a later wait() waits for it, or reports its failure, again
            if pending.done() and pending.exception() is exc:
                self._pending = None
            raise
        self._pending = None


@functools.lru_cache(maxsize=1)
def _writer_thread() -> ThreadPoolExecutor:
    # (its thread is joined at interpreter exit, so a pending save still completes)
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnngraph-checkpoint")


def save_checkpoint(directory, arrays: dict, meta: dict,
                    optimizer_state: dict | None = None, same_as: tuple[Path, dict] | None = None) -> dict:
    """Write a checkpoint into ``directory`` (created if needed), atomically; returns its meta.json ``files``.

    ``arrays`` and ``optimizer_state`` may hold NumPy or CuPy arrays (copied to the host).
    ``meta`` must be JSON-able; NumPy scalars and arrays are converted. ``same_as``: (a checkpoint directory, the
    ``files`` its save returned) written from the same arrays: its data files are hard-linked instead of written
    again (they are never changed in place, only replaced), where the filesystem allows.
    """
    directory = Path(directory)
    # Serialise meta first: a bad meta must fail before anything touches the disk.
    try:
        json.dumps(meta, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {directory}: meta is not JSON-serialisable: {exc}"
                              ) from exc
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {directory}: cannot create directory: {exc}"
                              ) from exc

    # One save at a time in a folder (another thread or process, Model.save or train): two interleaved saves
    # would each remove the other's new files as stale and leave a meta.json naming a deleted file.
    with folder_lock(directory) as locked:
        replaced = _named_files(directory)
        try:
            files = {"weights": _write_or_link(directory, "weights", arrays, same_as)}
            if optimizer_state is not None:
                files["optimizer"] = _write_or_link(directory, "optimizer", optimizer_state, same_as)
            fsync_dir(directory)  # data files' directory entries are durable before the commit

            record = {"format": FORMAT, "version": FORMAT_VERSION, "files": files, "meta": meta}
            text = json.dumps(record, indent=2, default=_json_default) + "\n"
            atomic_write(directory, "meta", META_FILE, lambda f: f.write(text.encode("utf-8")))
            fsync_dir(directory)
        except OSError as exc:   # a full disk, a read-only folder: meta.json was not replaced
            kept = "any checkpoint there before is unchanged" if locked else \
                "this save did not replace the checkpoint there before"
            raise CheckpointError(f"checkpoint {directory} could not be written ({exc.strerror or exc}); "
                                  f"{kept}") from None
        keep = {entry["name"] for entry in files.values()}
        # Unlocked (a filesystem without locks), another save may be writing here: remove only the files
        # of the checkpoint this save replaced, never files that may be another save's.
        _remove_stale(directory, keep, only=None if locked else replaced)
    return files


def copy_checkpoint(src, dst) -> None:
    """Copy the checkpoint in ``src`` to ``dst`` (verified on load, written atomically)."""
    ck = load_checkpoint(src)
    save_checkpoint(dst, ck.arrays, ck.meta, ck.optimizer_state)


def _write_or_link(directory: Path, part: str, arrays: dict, same_as: tuple[Path, dict] | None) -> dict:
    """The meta.json entry of ``part``: a hard link to the same data file of ``same_as`` (saved from these arrays)
    when there is one and links work here, else the file written anew."""
    entry = same_as[1].get(part) if same_as is not None else None
    if entry is not None:
        target = directory / entry["name"]   # named by its content's hash: one there already holds the same
        try:
            if not target.exists():
                os.link(Path(same_as[0]) / entry["name"], target)
            return dict(entry)
        except OSError:   # no hard links on this filesystem, or the file went: write it
            pass
    return _write_npz(directory, part, arrays)


def _write_npz(directory: Path, part: str, arrays: dict) -> dict:
    """Write ``arrays`` as ``<part>-<hash>.npz``; return its meta.json entry."""
    host = _host_arrays(directory, part, arrays)
    tmp = atomic_write(directory, part, None, lambda f: _write_npz_stream(f, host))
    digest, size = _sha256(tmp)
    name = f"{part}-{digest[:16]}.npz"
    try:
        os.replace(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"name": name, "sha256": digest, "bytes": size}


def _host_arrays(directory: Path, part: str, arrays: dict) -> dict[str, np.ndarray]:
    """Arrays as host NumPy arrays; reject what would need pickling to store."""
    out = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise CheckpointError(
                f"checkpoint {directory}: {part} array name {key!r}: expected a non-empty str")
        a = np.asarray(to_numpy(value))
        if a.dtype.hasobject:
            raise CheckpointError(
                f"checkpoint {directory}: {part} array {key!r} has dtype object; "
                "expected a numeric or bool array (checkpoints never store pickles)")
        out[key] = a
    return out


def _write_npz_stream(f, arrays: dict[str, np.ndarray]) -> None:
    # Same container as np.savez, written by hand so any key is allowed (np.savez takes
    # keys as keyword arguments) and pickles are refused at save time too.
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, a in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, a, allow_pickle=False)


def atomic_write(directory: Path, tag: str, final: str | None, write) -> Path:
    """Write via a temp file in ``directory``, fsync it, and move it onto ``final``: ``final`` is either
    the old file, whole, or the new one, whole (a full disk or a crash never leaves it truncated).

    With ``final=None`` the fsynced temp file is returned for the caller to name.
    The temp file is removed if anything fails.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{tag}-", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:   # mkstemp makes it private (0600); a checkpoint is as shareable as any file (where modes exist)
        os.fchmod(fd, FILE_MODE)
    except (OSError, AttributeError):
        pass
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if final is not None:
            os.replace(tmp, directory / final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return directory / final if final is not None else tmp


def fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _named_files(directory: Path) -> set[str]:
    """The data files the checkpoint now in ``directory`` names (none when it has no valid meta.json)."""
    record = _record_or_none(directory)
    return {entry["name"] for entry in record["files"].values()} if record else set()


def _remove_stale(directory: Path, keep: set[str], only: set[str] | None = None) -> None:
    """Delete data files no longer named by meta.json and temps of interrupted saves (of ``only``, when given)."""
    for path in directory.iterdir():
        name = path.name
        if name in keep or not (_DATA_NAME.match(name) or _TEMP_NAME.match(name)) or \
                (only is not None and name not in only):
            continue
        try:
            path.unlink()
        except OSError:  # best effort: a leftover file never affects loading
            pass


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _json_default(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


# --- loading -------------------------------------------------------------------------

def load_checkpoint(directory) -> Checkpoint:
    """Read and verify a checkpoint written by :func:`save_checkpoint`."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise CheckpointError(
            f"checkpoint {directory}: {what}; expected a checkpoint directory "
            f"containing {META_FILE}")
    record = _read_record(directory)
    files = record["files"]
    arrays = _read_npz(directory, files["weights"], "weights")
    optimizer = _read_npz(directory, files["optimizer"], "optimizer") \
        if "optimizer" in files else None
    changed = changed_plugins(record["meta"])
    if changed:
        warnings.warn(f"checkpoint {directory}: plugin file{'s' if len(changed) > 1 else ''} {', '.join(changed)} "
                      f"changed since the checkpoint was written; {'their' if len(changed) > 1 else 'its'} ops may "
                      f"now compute differently than in training", UserWarning, stacklevel=2)
    return Checkpoint(arrays=arrays, meta=record["meta"], optimizer_state=optimizer)


# --- plugin files ----------------------------------------------------------------------

def plugin_hashes(spec) -> dict[str, str]:
    """sha256 of each plugin file the spec names, keyed as the spec names it: saved with checkpoints, so that
    loading one after a plugin's code changed says so (the weights would silently take a new meaning)."""
    files = {name: _plugin_file(name, spec.base_dir) for name in spec.plugins}
    return {name: _file_sha256(path) for name, path in files.items() if path is not None}


def changed_plugins(meta: dict) -> list[str]:
    """The plugin files recorded in a checkpoint's meta whose contents differ now (files gone are left to
    the spec's own error)."""
    recorded = meta.get("plugin_sha256")
    if not isinstance(recorded, dict):
        return []
    files = {name: _plugin_file(name, meta.get("spec_dir")) for name in recorded}
    return [str(path) for name, path in files.items()
            if path is not None and recorded[name] != _file_sha256(path)]


def _plugin_file(name, base_dir) -> Path | None:
    """A plugin named as a .py file (relative ones beside the spec), if it exists; None for a module name."""
    if not isinstance(name, str) or not name.endswith(".py"):
        return None
    path = Path(name)
    if not path.is_absolute() and isinstance(base_dir, str):
        path = Path(base_dir, path)
    return path if path.is_file() else None


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_record(directory: Path) -> dict:
    path = directory / META_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; expected the {META_FILE} written last by save_checkpoint "
            "(the directory holds no complete checkpoint)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable or not valid JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cnngraph checkpoint; expected "
                              f"\"format\": \"{FORMAT}\"")
    if record.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {record.get('version')!r}; "
                              f"this cnngraph reads version {FORMAT_VERSION}")
    files = record.get("files")
    if not isinstance(files, dict) or "weights" not in files \
            or not isinstance(record.get("meta"), dict):
        raise CheckpointError(f"{path}: expected \"files\" with a \"weights\" entry "
                              "and a \"meta\" object")
    for part, entry in files.items():
        if part not in _PARTS or not _valid_entry(entry):
            raise CheckpointError(f"{path}: files.{part}: expected "
                                  "{\"name\": \"<part>-<hash>.npz\", \"sha256\", \"bytes\"}")
    return record


def _record_or_none(directory: Path) -> dict | None:
    try:
        return _read_record(Path(directory))
    except CheckpointError:
        return None


def read_meta(directory) -> dict | None:
    """The meta of the checkpoint in ``directory`` (its arrays are not read); None without a valid meta.json."""
    record = _record_or_none(directory)
    return record["meta"] if record else None


def _valid_entry(entry) -> bool:
    # The name must be a plain file in this directory: meta.json never points elsewhere.
    return (isinstance(entry, dict) and isinstance(entry.get("name"), str)
            and _DATA_NAME.match(entry["name"]) is not None
            and isinstance(entry.get("sha256"), str))


def _read_npz(directory: Path, entry: dict, part: str) -> dict[str, np.ndarray]:
    path = directory / entry["name"]
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {META_FILE} expects the {part} file here")
    digest, size = _sha256(path)
    if digest != entry["sha256"]:
        raise CheckpointError(
            f"{path}: sha256 {digest[:16]}… does not match {META_FILE} "
            f"({entry['sha256'][:16]}…, {entry.get('bytes')} bytes; this file has {size}); "
            "it is truncated, modified or from a different save")
    try:
        return _npz_arrays(path)
    except _NPZ_ERRORS as exc:
        raise CheckpointError(
            f"{path}: cannot read the {part} arrays ({exc}); expected an .npz of numeric "
            "arrays without pickled objects") from exc


_NPZ_ERRORS = (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile)


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the .npz at ``path``, read without pickles; one of _NPZ_ERRORS otherwise."""
    kind, head = array_file_kind(path)
    if kind != "npz":
        raise ValueError("a single .npy array, not an .npz archive" if kind == "npy" else
                         f"not an .npz archive: the file starts with {head!r}")
    return load_arrays(path)


# --- finding checkpoints, reading weights -------------------------------------------

_LAYOUTS = ("a run folder (with checkpoint/best/ or checkpoint/last/), its checkpoint/ folder, "
            f"or a checkpoint folder containing {META_FILE} (best/, last/)")


def resolve_checkpoint(path, prefer: str = "best", fall_back: bool = False) -> Path:
    """The checkpoint directory ``path`` names.

    ``path`` may be a checkpoint directory itself (it holds ``meta.json``), a run folder written by
    ``cnngraph train`` (its ``checkpoint/<prefer>``, else the other of best/last), the run's
    ``checkpoint/`` folder, or any folder holding ``best/`` or ``last/``. A ``<prefer>`` folder without
    ``meta.json`` (incomplete: its first save never finished, or damaged) is an error, as the other
    checkpoint holds other weights; with ``fall_back`` (resume: best/ holds the epoch last/'s first save
    was writing) the other one is taken, as when ``<prefer>`` is missing. Raises CheckpointError
    naming ``path`` and the layouts looked for.
    """
    if prefer not in ("best", "last"):
        raise ValueError(f"prefer must be 'best' or 'last', found {prefer!r}")
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{path}: does not exist; expected {_LAYOUTS}")
    if not p.is_dir():
        raise CheckpointError(f"{path}: is a file, not a checkpoint folder; expected {_LAYOUTS}")
    other = "last" if prefer == "best" else "best"
    for cand in (p, p / "checkpoint" / prefer, p / prefer, p / "checkpoint" / other, p / other,
                 p / "checkpoint"):
        if (cand / META_FILE).is_file():
            return cand
        if cand.name == prefer and cand.is_dir() and not (fall_back and cand != p):
            # there, but incomplete or damaged: never use the other one silently
            raise CheckpointError(f"{cand}: this {prefer} checkpoint has no {META_FILE} (incomplete or damaged); "
                                  f"name the {other} checkpoint explicitly if you want it: {cand.parent / other}")
    raise CheckpointError(f"{path}: no checkpoint found: no {META_FILE} found in {p}, {p / 'checkpoint'} or their "
                          f"best/ and last/ folders (the folder holds no checkpoint written by `cnngraph train` "
                          f"or Model.save). Expected {_LAYOUTS}")


def holds_run(folder) -> bool:
    """Whether ``folder`` holds a run written by ``cnngraph train`` (its checkpoint/ folder or metrics.json)."""
    folder = Path(folder)
    return (folder / "checkpoint").is_dir() or (folder / "metrics.json").is_file()


def run_folder(checkpoint_dir) -> Path:
    """The run folder a checkpoint directory belongs to (``RUN/checkpoint/best`` → ``RUN``)."""
    ckpt = Path(checkpoint_dir)
    if ckpt.name in ("best", "last"):
        ckpt = ckpt.parent
        if ckpt.name == "checkpoint":
            ckpt = ckpt.parent
    return ckpt


def load_weights(path, prefer: str = "best") -> tuple[dict[str, np.ndarray], dict | None]:
    """Parameters from ``path``: an ``.npz`` of arrays, or any folder :func:`resolve_checkpoint` accepts.

    Returns ``(arrays, meta)``: ``meta`` is the checkpoint's meta, ``None`` for an ``.npz``.
    """
    p = Path(path)
    if p.is_dir():
        ck = load_checkpoint(resolve_checkpoint(p, prefer))
        return ck.arrays, ck.meta
    if not p.exists():
        raise CheckpointError(f"{path}: file not found; expected an .npz of parameters or a checkpoint folder")
    try:
        return _npz_arrays(p), None
    except _NPZ_ERRORS as exc:
        raise CheckpointError(f"{path}: not a readable .npz of parameters ({exc})") from None


def trained_from(meta: dict | None) -> str:
    """'; the checkpoint was trained from spec NAME (in DIR)' where its meta names the spec it stores, else '':
    for the messages of weights that do not fit another spec."""
    meta = meta or {}
    stored = meta.get("spec") if isinstance(meta.get("spec"), dict) else {}
    name = stored.get("name") or meta.get("spec_name")
    if not isinstance(name, str) or not name:
        return ""
    where = meta.get("spec_dir")
    return f"; the checkpoint was trained from spec '{name}'" + (f" (in {where})" if isinstance(where, str) else "")


# --- RNG state -----------------------------------------------------------------------

def rng_state_to_json(gen: np.random.Generator) -> dict:
    """``gen``'s bit-generator state as JSON-able data (big ints stay Python ints)."""
    return _encode(gen.bit_generator.state)


def rng_state_from_json(data: dict) -> np.random.Generator:
    """Rebuild the Generator saved by :func:`rng_state_to_json`, at the same position."""
    state = _decode(data)
    name = state.get("bit_generator") if isinstance(state, dict) else None
    cls = getattr(np.random, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, np.random.BitGenerator)):
        raise CheckpointError(
            f"RNG state: unknown bit generator {name!r}; expected a numpy.random "
            "BitGenerator name such as 'PCG64'")
    bit_gen = cls()
    try:
        bit_gen.state = state
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"RNG state for {name}: invalid ({exc})") from exc
    return np.random.Generator(bit_gen)


def _encode(obj):
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):  # e.g. MT19937's key
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _decode(obj):
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
        return {k: _decode(v) for k, v in obj.items()}
    return obj
