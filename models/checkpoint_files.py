"""The files of a checkpoint folder: a new version written whole or not at all, and read as one.

A new version is written into a hidden sibling folder (`.NAME.new-PID-TOKEN`), every file and the
folder synced to disk, and swapped in with one atomic rename (Linux's renameat2 RENAME_EXCHANGE);
the old version is then removed. A writer killed at any instant leaves the previous version or the
new one, and at worst a hidden sibling, which the next save of that folder removes (the service
skips hidden folders). Files are 0644 and folders 0755 whatever the umask or the library that
serialised them, so a service running as another user reads what a trainer wrote.

Readers open the folder once and read its files through that descriptor, so they see one version;
`models.checkpoint.load_checkpoint` reads again when the folder was swapped while it read. Files
are opened without blocking and must be regular files (a FIFO named card.json is refused, not
waited on). Files inside a version (the card, after evaluation) are each replaced at once.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from contextlib import contextmanager, suppress
from pathlib import Path

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
FILE_MODE, FOLDER_MODE = 0o644, 0o755  # as the shipped weights: readable by the service's own user
MAX_CARD_BYTES = 16 << 20  # the shipped cards are under 64 KiB
# A version being written, or one being removed: `.NAME.new-PID-TOKEN` (the writer's pid).
STAGED = re.compile(r"^\.(?P<name>.+)\.(?:new|old)-(?P<pid>\d+)-[0-9a-f]{8}$")
RENAME_EXCHANGE, AT_FDCWD = 2, -100  # linux/fs.h, fcntl.h


class CheckpointError(RuntimeError):
    """A checkpoint is missing, tampered with, or does not fit its family."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_bytes(card: dict) -> bytes:
    return (json.dumps(card, indent=2, sort_keys=False) + "\n").encode()


# -- writing ----------------------------------------------------------------------------------

def publish(directory: str | Path, files: dict[str, bytes], keep_others: bool = False) -> None:
    """Make `files` (name -> bytes) the folder's new version in one rename; with `keep_others`
    the current version's other files are carried over (else they go with it)."""
    directory = Path(directory)
    if directory.is_symlink():  # a new version of the folder it names, beside that folder
        directory = directory.resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(directory)
    staging = directory.parent / f".{directory.name}.new-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(staging, FOLDER_MODE)
    try:
        os.chmod(staging, FOLDER_MODE)  # whatever the umask
        if keep_others:
            files = {**_other_files(directory, files), **files}
        for name, data in files.items():
            _write_new(staging / name, data)
        _fsync(staging)
        replaced = _swap_in(staging, directory)
        _fsync(directory.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the new version, or the old one once swapped
        raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def _write_new(path: Path, data: bytes, dir_fd: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd)
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _other_files(directory: Path, replaced: dict[str, bytes]) -> dict[str, bytes]:
    """The current version's regular files other than `replaced`, as bytes."""
    if not directory.is_dir():
        return {}
    with opened(directory) as (dir_fd, _):
        return {name: read_regular(dir_fd, name, directory, None) for name in os.listdir(dir_fd)
                if name not in replaced and stat.S_ISREG(os.stat(name, dir_fd=dir_fd).st_mode)}


def _swap_in(staging: Path, directory: Path) -> Path | None:
    """Put `staging` where `directory` is; returns where the version it replaced now is."""
    try:
        os.rename(staging, directory)  # no version yet (or an empty folder)
        return None
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    if _exchange(staging, directory):
        return staging
    # No atomic exchange (not Linux, or a filesystem without it): two renames, between which the
    # folder is absent for an instant (readers read again); never half of one version.
    old = directory.parent / f".{directory.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(directory, old)
    try:
        os.rename(staging, directory)
    except BaseException:
        os.rename(old, directory)
        raise
    return old


@functools.cache
def _renameat2():
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except (OSError, TypeError):  # no C library to ask (Windows)
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def remove_leftovers(directory: str | Path) -> None:
    """Remove the hidden versions of `directory` that writers killed mid-save left behind."""
    directory = Path(directory)
    if not directory.parent.is_dir():
        return
    for entry in os.scandir(directory.parent):
        staged = STAGED.match(entry.name)
        if staged and staged["name"] == directory.name and not _alive(int(staged["pid"])):
            shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process's own, from a save that failed
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def write_card(directory: str | Path, card: dict, weights_sha256: str | None = None) -> None:
    """Replace the card, at once (see `write_files`)."""
    write_files(directory, {CARD_FILE: card_bytes(card)}, weights_sha256)


def update_card(directory: str | Path, weights_sha256: str | None = None, **fields) -> dict:
    """Merge fields into an existing card (evaluation writes its metrics this way); with
    `weights_sha256`, only into the card of those weights (see `write_files`)."""
    card: dict = {}

    def merged(current_card) -> dict[str, bytes]:
        card.update(current_card())
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(card.get(key), dict):
                card[key] = {**card[key], **value}
            else:
                card[key] = value
        return {CARD_FILE: card_bytes(card)}
    _write_into(Path(directory), merged, weights_sha256)
    return card


def write_files(directory: str | Path, files: dict[str, bytes], weights_sha256: str | None = None) -> None:
    """Replace files inside a checkpoint folder, each at once. With `weights_sha256` (what the
    writer measured) only while the folder holds those weights: a folder whose card names others,
    or that a save replaced meanwhile, is left alone (CheckpointError)."""
    _write_into(Path(directory), lambda _: files, weights_sha256)


def _write_into(directory: Path, files_of, weights_sha256: str | None) -> None:
    """Write `files_of(current_card)` (name -> bytes) into the folder's current version."""
    with opened(directory) as (dir_fd, version):
        current_card = functools.partial(read_card_at, dir_fd, directory)
        if weights_sha256 is not None and (held := current_card().get("sha256")) != weights_sha256:
            raise CheckpointError(f"{directory} now holds other weights (sha256 {str(held)[:12]}...) than the "
                                  f"ones measured ({weights_sha256[:12]}...); their card was left alone")
        replaced = CheckpointError(f"{directory} was replaced by a new version while its card was written; "
                                   f"the new one was left alone")
        try:
            for name, data in files_of(current_card).items():
                _replace_at(dir_fd, name, data)
            os.fsync(dir_fd)
        except FileNotFoundError:  # the version was removed under it, once a save had swapped it out
            if identity(directory) != version:
                raise replaced from None
            raise
        if weights_sha256 is not None and identity(directory) != version:
            raise replaced


def _replace_at(dir_fd: int, name: str, data: bytes) -> None:
    """Replace the file `name` in the folder `dir_fd` at once."""
    temporary = f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        _write_new(Path(temporary), data, dir_fd)
        os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


# -- reading ----------------------------------------------------------------------------------

@contextmanager
def opened(directory: Path):
    """(a file descriptor of the folder, its identity): the files read through it are of one version."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise CheckpointError(f"{directory}: not a checkpoint folder") from e
    try:
        info = os.fstat(fd)
        yield fd, (info.st_dev, info.st_ino)
    finally:
        os.close(fd)


def identity(directory: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def open_regular(dir_fd: int, name: str, directory: Path) -> int:
    """A descriptor of the regular file `name` in the folder: never blocks (a FIFO is refused)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: no {name}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{directory / name}: not a regular file")
    return fd


def read_regular(dir_fd: int, name: str, directory: Path, limit: int | None) -> bytes:
    fd = open_regular(dir_fd, name, directory)
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
    finally:
        os.close(fd)
    if limit is not None and len(data) > limit:
        raise CheckpointError(f"{directory / name}: larger than {limit >> 20} MiB")
    return data


def fd_path(fd: int) -> str:
    """A path that opens the file `fd` holds (safetensors opens files by name)."""
    return f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else f"/dev/fd/{fd}"


def read_card(directory: str | Path) -> dict:
    directory = Path(directory)
    with opened(directory) as (dir_fd, _):
        return read_card_at(dir_fd, directory)


def read_card_at(dir_fd: int, directory: Path) -> dict:
    path = directory / CARD_FILE
    try:
        card = json.loads(read_regular(dir_fd, CARD_FILE, directory, MAX_CARD_BYTES), parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(card, dict) or "family" not in card or "config" not in card:
        raise CheckpointError(f"{path}: a card needs 'family' and 'config'")
    return card


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a card may hold")
