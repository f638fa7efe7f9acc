"""The CLI's output folders: one policy for every command that writes, checked before any work; a run is
written beside the target and swapped in atomically.

`check_out_dir(path, marker, ...)` is the policy every writing command applies to its --out (generate,
sweep, sensitivity, train-default; `check_out_file` for search-policy's one JSON file); `RunFolder(path)`
applies it for generate: it resolves `path` (symlinks and `..`, as the kernel would) and refuses, before the model
is loaded, a target it could not replace: the filesystem root, a mount point, the current folder or one
of its ancestors, a path under a file, a folder without write permission (or with a sub-folder without),
and an existing non-empty folder that does not hold a previous run (no run.json), so a slip of the
finger never deletes a source tree. The run is written to `.NAME.tmp-XXXXXXXX` beside the target, on
the same filesystem, and `commit()` swaps it into place with one `renameat2(RENAME_EXCHANGE)` (a rename
aside and back where the filesystem lacks it), so the target is always either the old run or the new one.

Each temporary folder is `flock`ed by the process writing it; the kernel drops the lock when that
process ends, however it ends. So a later run into the same target removes the `.NAME.tmp-*` folders
nobody holds (left by a SIGKILL or a power cut) and leaves those of a run still going.

`interrupts_raise()` turns SIGINT and SIGTERM into `Interrupted` (a KeyboardInterrupt), so `finally`
blocks clean up; while a folder is being swapped in or removed, signals are held and acted on after.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

RUN_MARKER = "run.json"  # an existing folder holding this is a previous run and may be replaced
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


class OutDirError(Exception):
    """The output folder cannot be used; the message is one line for the CLI's 'error: ...'."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signum` says which (exit status 128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_held = threading.local()


def _holding() -> bool:
    return getattr(_held, "depth", 0) > 0


@contextlib.contextmanager
def _signals_held():
    """A signal that arrives inside is recorded and raised on the way out, so a rename or a cleanup is never
    cut in half (`RunFolder.commit` drops it instead: by then the run is written)."""
    _held.depth = getattr(_held, "depth", 0) + 1
    try:
        yield
    finally:
        _held.depth -= 1
        pending = getattr(_held, "pending", None)
        if _held.depth == 0 and pending is not None:
            _held.pending = None
            raise Interrupted(pending)


@contextlib.contextmanager
def interrupts_raise():
    """SIGINT and SIGTERM raise `Interrupted` in the main thread (outside held sections) while inside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _holding():
            _held.pending = signum
        else:
            raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)  # None: a handler set outside Python


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _first_existing(path: Path) -> Path:
    while not os.path.lexists(path):
        path = path.parent
    return path


def _unwritable(folder: Path) -> Path | None:
    """The first folder in the tree whose entries this process may not remove, or None."""
    for root, _, _ in os.walk(folder):  # symlinked folders are not entered: rmtree removes only the link
        if not os.access(root, os.W_OK | os.X_OK):
            return Path(root)
    return None


def _marker_ok(target: Path, marker: str | tuple[str, ...], keys: tuple[str, ...]) -> bool:
    """`target/marker` exists (any of several names or glob patterns); a `.json` marker must be a JSON object
    (holding `keys`): a stray or damaged file of that name does not make a folder a previous output."""
    if isinstance(marker, tuple):
        return any(_marker_ok(target, m, keys) for m in marker)
    if "*" in marker:
        return any(target.glob(marker))
    path = target / marker
    if not keys and not marker.endswith(".json"):
        return path.exists()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and all(k in data for k in keys)


def _checked_path(path: str, flag: str, what: str) -> Path:
    """`path` resolved, after the checks every output shares: named, not the root, not the current folder
    or an ancestor of it, under a writable folder."""
    shown = path
    if "\0" in path:
        raise OutDirError(f"{flag} contains a NUL character")
    target = Path(os.path.realpath(path))
    if target == target.parent:
        raise OutDirError(f"{flag} {shown} is the filesystem root; choose a {what}")
    try:
        cwd = Path(os.path.realpath(os.getcwd()))
    except OSError:  # the current folder was removed: nothing to protect
        cwd = None
    if cwd is not None and (target == cwd or target in cwd.parents):
        raise OutDirError(f"{flag} {shown} resolves to {target}, which is or contains the current folder; "
                          f"choose a new {what}")
    base = _first_existing(target.parent)
    if not base.is_dir():
        raise OutDirError(f"cannot write to {shown}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutDirError(f"cannot write to {shown}: no write permission in {base}")
    return target


def check_out_dir(path: str, marker: str | tuple[str, ...] = RUN_MARKER, keys: tuple[str, ...] = (), flag: str = "--out",
                  kind: str = "run", in_place: bool = False, error: type[Exception] | None = None) -> Path:
    """The one output-folder policy of every CLI command that writes a folder. Refused with OutDirError
    (one line), before any work: an empty name, the filesystem root, the current folder or an ancestor,
    a path under a file or in a folder without write permission, a file, a mount point, and an existing
    non-empty folder that does not hold `marker` (a previous output of the same command; with `keys`, a
    JSON object holding them). `in_place`: the command writes into the folder (resumable) rather than
    replacing it, so only the folder itself must be writable. `error`: the exception class to raise
    instead of OutDirError (a command's own one-line usage error)."""
    try:
        return _check_dir(path, marker, keys, flag, kind, in_place)
    except OutDirError as err:
        if error is None:
            raise
        raise error(str(err)) from None


def _check_dir(path: str, marker: str | tuple[str, ...], keys: tuple[str, ...], flag: str, kind: str, in_place: bool) -> Path:
    shown = path
    target = _checked_path(path, flag, f"folder for the {kind}")
    if os.path.lexists(target):
        if not target.is_dir():
            raise OutDirError(f"{flag} {shown} exists and is not a directory")
        if os.path.ismount(target):
            raise OutDirError(f"{flag} {shown} is a mount point and cannot be {'used' if in_place else 'replaced'}")
        if any(target.iterdir()) and not _marker_ok(target, marker, keys):
            named = marker if isinstance(marker, str) else " or ".join(marker)
            raise OutDirError(f"{flag} {shown} is a non-empty folder without {'a valid ' if keys else ''}{named} "
                              f"(not a previous {kind}); refusing to {'write into' if in_place else 'replace'} it")
        blocked = (None if os.access(target, os.W_OK | os.X_OK) else target) if in_place else _unwritable(target)
        if blocked is not None:
            raise OutDirError(f"{flag} {shown} cannot be {'written' if in_place else 'replaced'}: "
                              f"no write permission in {blocked}")
    return target


def check_out_file(path: str, keys: tuple[str, ...], flag: str = "--out") -> Path:
    """The same policy for a command that writes one JSON file: not a folder, and an existing file only when
    it is a previous output (a JSON object holding `keys`), so a typo never overwrites a source file."""
    target = _checked_path(path, flag, "file")
    if os.path.lexists(target):
        if target.is_dir():
            raise OutDirError(f"{flag} {path} is a folder; name a file")
        if not _marker_ok(target.parent, target.name, keys):
            raise OutDirError(f"{flag} {path} exists and is not a previous output of this command "
                              f"(a JSON object with {', '.join(keys)}); refusing to overwrite it")
        if not os.access(target, os.W_OK):
            raise OutDirError(f"cannot write to {path}: no write permission")
    return target


def _remove_stale(target: Path) -> None:
    """Remove `.NAME.tmp-*` folders beside target that no running process holds."""
    parent, prefix = target.parent, f".{target.name}.tmp-"
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        path = parent / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile (renamed into place), or not a folder of ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a run still writing it
        try:
            with _signals_held():
                shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


class RunFolder:
    """`with RunFolder(path) as folder:` write into `folder.tmp`, then `folder.commit()`; on any exit
    before commit (error, interrupt) the temporary folder is removed and the target is untouched."""

    def __init__(self, path: str, marker: str = RUN_MARKER, keys: tuple[str, ...] = (), kind: str = "run"):
        self.shown = path
        self._policy = {"marker": marker, "keys": keys, "kind": kind}
        self.target = check_out_dir(path, **self._policy)
        self.tmp: Path | None = None
        self._fd: int | None = None
        self._committed = False
        self._hold = None

    def __enter__(self) -> "RunFolder":
        target = self.target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(target)
            with _signals_held():
                self.tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
                self._fd = os.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY)
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(self.tmp, 0o777 & ~mask)  # mkdtemp makes it private; a run folder gets the usual mode
        except OSError as err:
            self._cleanup()
            raise OutDirError(f"cannot write to {self.shown}: {err.strerror or err}") from None
        except BaseException:
            self._cleanup()
            raise
        return self

    def commit(self) -> None:
        """Swap the written run into place. From here to the end of the `with` block, signals are held."""
        self._hold = _signals_held()
        self._hold.__enter__()
        target, tmp = self.target, self.tmp
        try:
            if os.path.lexists(target):
                check_out_dir(self.shown, **self._policy)  # still replaceable (it may have changed meanwhile)
                if _exchange(tmp, target):
                    shutil.rmtree(tmp, ignore_errors=True)  # now the old run
                else:
                    # Named apart from the temporary folders, so no other run takes it for a stale one.
                    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                    os.rmdir(old)
                    os.rename(target, old)
                    try:
                        os.rename(tmp, target)
                    except OSError:
                        os.rename(old, target)
                        raise
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
        except OSError as err:
            raise OutDirError(f"cannot write to {self.shown}: {err.strerror or err}") from None
        self._committed = True

    def _cleanup(self) -> None:
        with _signals_held():
            if self.tmp is not None and not self._committed:
                shutil.rmtree(self.tmp, ignore_errors=True)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __exit__(self, *exc) -> None:
        try:
            self._cleanup()
        finally:
            if self._hold is not None:
                if self._committed:
                    _held.pending = None  # the run is in place: finish normally
                hold, self._hold = self._hold, None
                hold.__exit__(None, None, None)
