"""A checkpoint folder is written whole or not at all (issue 37): a writer that dies at any file
operation, or is SIGKILLed while it saves in a loop, leaves the previous checkpoint or the new one,
never a mix; files are readable by other users whatever the umask; a trainer of one uid writes
what a service of another loads. Writers are forked children of this process (no interpreter to
start), each ended by a real os._exit or SIGKILL."""

from __future__ import annotations

import errno
import functools
import os
import random
import select
import shutil
import signal
import stat
import tempfile
import time
from pathlib import Path

import pytest
import torch

from app.registry import Registry
from models import checkpoint_files
from models.checkpoint import load_checkpoint, save_checkpoint
from models.families.dcgan import DCGAN, DCGANConfig

KILLED = 77  # a child's exit status when the fault killed it
DEADLINE_S = 60
# The calls of models.checkpoint_files that touch the file system, each a point to die at.
FILE_OPERATIONS = {"open", "write", "fsync", "fchmod", "close", "mkdir", "chmod", "rename", "replace", "unlink",
                   "rmdir", "rmtree"}


def version(n: int) -> DCGAN:
    """Checkpoint version n: weights drawn from seed n, so that a mix of two versions is seen."""
    with torch.random.fork_rng():
        torch.manual_seed(n)
        return DCGAN(DCGANConfig(latent_dim=8, generator_width=4, discriminator_width=4)).eval()


def save_version(folder: Path, n: int) -> None:
    save_checkpoint(version(n), folder, {"name": f"v{n}", "dataset": "fashion-mnist"},
                    extra_files={"samples.png": f"grid of v{n}".encode()})


@functools.cache
def weights_of(n: int) -> dict[str, torch.Tensor]:
    return version(n).state_dict()


def loaded_version(folder: Path) -> int:
    """Which version `folder` holds, checked weight by weight against it (and the extra file)."""
    model, card = load_checkpoint(folder)
    n = int(card["name"][1:])
    expected = weights_of(n)
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items()), f"v{n} is mixed"
    assert (folder / "samples.png").read_bytes() == f"grid of v{n}".encode()
    return n


class Faulty:
    """`module` (os or shutil) with its file operations counted; at the `at`-th the process dies
    (`os._exit`, a `write` first writing half its bytes) or the call fails with ENOSPC."""

    def __init__(self, module, counter: list, at: int | None, fault: str):
        self._module, self._counter, self._at, self._fault = module, counter, at, fault

    def __getattr__(self, name):
        real = getattr(self._module, name)
        if name not in FILE_OPERATIONS:
            return real

        def operation(*args, **kwargs):
            self._counter[0] += 1
            if self._counter[0] == self._at:
                if self._fault == "error" and name != "rmtree":  # rmtree is called to ignore errors
                    raise OSError(errno.ENOSPC, "No space left on device (injected)")
                if self._fault == "kill":
                    if name == "write":
                        real(args[0], bytes(args[1])[:len(args[1]) // 2])
                    os._exit(KILLED)
            return real(*args, **kwargs)
        return operation


def with_faults(monkeypatch, at: int | None, fault: str) -> list:
    counter = [0]
    monkeypatch.setattr(checkpoint_files, "os", Faulty(os, counter, at, fault))
    monkeypatch.setattr(checkpoint_files, "shutil", Faulty(shutil, counter, at, fault))
    exchange = checkpoint_files._exchange

    def counted_exchange(a, b):
        counter[0] += 1
        if counter[0] == at and fault == "kill":
            os._exit(KILLED)
        return exchange(a, b)
    monkeypatch.setattr(checkpoint_files, "_exchange", counted_exchange)
    return counter


def in_child(work) -> int:
    """Run `work()` in a forked child; its exit status (0 when it returned)."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            torch.set_num_threads(1)  # no thread pool to inherit half of
            work()
            status = 0
        finally:
            os._exit(status)
    return wait_for(pid)


def wait_for(pid: int) -> int:
    """The child's exit status, or a failure if it has not ended within DEADLINE_S."""
    ended = os.pidfd_open(pid)
    try:
        if not select.select([ended], [], [], DEADLINE_S)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the writer {pid} did not end within {DEADLINE_S} s")
    finally:
        os.close(ended)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_a_save_killed_at_any_file_operation_leaves_one_whole_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "weights"
    save_version(root / "m", 1)
    with monkeypatch.context() as patch:  # how many operations a save over a checkpoint takes
        operations = with_faults(patch, None, "count")
        save_version(tmp_path / "scratch" / "m", 1)
        operations[0] = 0
        save_version(tmp_path / "scratch" / "m", 2)
    total = operations[0]
    assert total >= 15, total  # mkdir, chmod, per file open/fchmod/write/fsync/close, fsyncs, exchange, rmtree
    seen, left_beside = [], 0
    for at in range(1, total + 1):
        def save_with_a_kill(at=at):
            with_faults(monkeypatch, at, "kill")
            save_version(root / "m", 2)
        assert in_child(save_with_a_kill) == KILLED, f"the save ended before operation {at}"
        seen.append(loaded_version(root / "m"))
        registry = Registry(root, torch.device("cpu"))
        registry._load()  # what the service would serve now: the folder, not what is beside it
        assert sorted(registry.models) == ["m"] and registry.failed == {}, (at, registry.failed)
        left_beside += bool(hidden(root))
        for name in hidden(root):  # so that the next save's operations are counted from the same start
            shutil.rmtree(root / name)
        if seen[-1] == 2:  # swapped in: put the old version back for the next kill point
            shutil.rmtree(root / "m")
            save_version(root / "m", 1)
    assert seen[0] == 1 and seen[-1] == 2 and seen == sorted(seen), seen  # old until the one rename, then new
    assert left_beside > total // 2
    assert in_child(lambda: (with_faults(monkeypatch, total // 2, "kill"), save_version(root / "m", 2))) == KILLED
    assert hidden(root), "a save killed half-way leaves its folder beside the checkpoint"
    save_version(root / "m", 3)  # the next save works, and removes what the killed one left
    assert loaded_version(root / "m") == 3 and hidden(root) == []


def test_a_save_that_fails_at_any_file_operation_leaves_one_whole_checkpoint(tmp_path, monkeypatch):
    """Disk full (ENOSPC) at each operation in turn: the save raises, the folder holds the old
    version or the new, and nothing is left beside it."""
    root = tmp_path / "weights"
    save_version(root / "m", 1)
    at, completed = 0, False
    while not completed:
        at += 1
        with monkeypatch.context() as patch:
            with_faults(patch, at, "error")
            try:
                save_version(root / "m", 2)
                completed = True
            except OSError as e:
                assert e.errno == errno.ENOSPC
        assert loaded_version(root / "m") in (1, 2) and hidden(root) == [], at
        if not completed and loaded_version(root / "m") == 2:
            shutil.rmtree(root / "m")
            save_version(root / "m", 1)
    assert at >= 15 and loaded_version(root / "m") == 2


def test_real_sigkills_of_a_writer_saving_in_a_loop_leave_one_whole_checkpoint(tmp_path):
    root = tmp_path / "weights"
    save_version(root / "m", 0)
    rng = random.Random(0)
    landed_mid_save, kills = 0, 20
    for kill in range(kills):
        first = loaded_version(root / "m") + 1
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read)
                torch.set_num_threads(1)
                for n in range(first, first + 1000):
                    save_version(root / "m", n)
                    os.write(write, b"s")
            finally:
                os._exit(1)
        os.close(write)
        saves, give_up = 0, time.monotonic() + DEADLINE_S
        wanted = rng.randint(1, 3)
        while saves < wanted:  # let it save a few times, then kill it at a random instant of the next
            assert time.monotonic() < give_up, "the writer never saved"
            if select.select([read], [], [], 1)[0]:
                saves += len(os.read(read, 64))
        time.sleep(rng.uniform(0, 0.01))
        os.kill(pid, signal.SIGKILL)
        assert wait_for(pid) == -signal.SIGKILL
        saves += len(os.read(read, 64)) if select.select([read], [], [], 0)[0] else 0
        os.close(read)
        held = loaded_version(root / "m")
        assert held in (first + saves - 1, first + saves), (kill, held, first, saves)  # the last or the next
        landed_mid_save += bool(hidden(root))
    save_version(root / "m", 5000)
    assert loaded_version(root / "m") == 5000 and hidden(root) == []
    print(f"{kills} SIGKILLs, {landed_mid_save} left a half-written or old version beside the checkpoint")


def test_files_are_readable_by_others_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        save_version(tmp_path / "m", 1)
        checkpoint_files.update_card(tmp_path / "m", metrics={"fid": 1.0})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()} == {
        "model.safetensors": 0o644, "card.json": 0o644, "samples.png": 0o644}


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to other uids (os.setuid) needs root; "
                                               "test_files_are_readable_by_others_whatever_the_umask still runs")
def test_a_checkpoint_trained_as_one_user_is_served_as_another():
    """The image's trainer (uid 10002, with a private umask) saves twice; the service's user
    (uid 10001) loads the folder, which neither owns the other's files."""
    base = Path(tempfile.mkdtemp(prefix="genserve-uids-"))
    try:
        os.chmod(base, 0o755)
        (base / "weights").mkdir()
        os.chown(base / "weights", 10002, 10002)  # the trainer owns the weights, as in the image

        def train_as_trainer():
            os.setgid(10002)
            os.setuid(10002)
            os.umask(0o077)
            save_version(base / "weights" / "m", 1)
            save_version(base / "weights" / "m", 2)
            checkpoint_files.update_card(base / "weights" / "m", metrics={"fid": 1.0})

        def serve_as_api():
            os.setgid(10001)
            os.setuid(10001)
            assert loaded_version(base / "weights" / "m") == 2
            registry = Registry(base / "weights", torch.device("cpu"))
            registry._load()
            assert sorted(registry.models) == ["m"] and registry.failed == {}, registry.failed

        assert in_child(train_as_trainer) == 0
        assert (base / "weights" / "m" / "model.safetensors").stat().st_uid == 10002
        assert in_child(serve_as_api) == 0, "uid 10001 could not load what uid 10002 saved"
    finally:
        shutil.rmtree(base)


# -- writes into a version: evaluation's card ------------------------------------------------------

def test_evaluation_writes_only_onto_the_card_of_the_weights_it_measured(tmp_path, monkeypatch):
    """A save lands while `models.evaluate` measures a checkpoint (here the classifier, whose
    figures need no other model): the new weights keep their own card and feature files, and
    evaluation refuses in one line."""
    from models.evaluation import evaluate
    from models.families.classifier import Classifier, ClassifierConfig

    def classifier(seed: int) -> Classifier:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return Classifier(ClassifierConfig(width=4, feature_dim=8)).eval()
    folder = tmp_path / "classifier"
    save_checkpoint(classifier(1), folder, {"name": "classifier", "dataset": "fashion-mnist",
                                            "classes": [str(i) for i in range(10)]})
    measure = evaluate.features_of

    def features_while_a_save_lands(*args, **kwargs):
        save_checkpoint(classifier(2), folder, {"name": "classifier", "dataset": "fashion-mnist",
                                                "classes": [str(i) for i in range(10)]})
        return measure(*args, **kwargs)
    monkeypatch.setattr(evaluate, "features_of", features_while_a_save_lands)
    with pytest.raises(SystemExit, match=r"^error: .*classifier now holds other weights \(sha256 [0-9a-f]{12}\.\.\.\) "
                                         r"than the ones measured .*their card was left alone$"):
        evaluate.main([str(folder), "--limit", "50", "--quiet", "--threads", "1"])
    card = checkpoint_files.read_card(folder)
    new_sha = card["sha256"]
    assert not card.get("metrics") and sorted(p.name for p in folder.iterdir()) == ["card.json", "model.safetensors"]
    monkeypatch.setattr(evaluate, "features_of", measure)  # no save meanwhile: the figures land on its card
    evaluate.main([str(folder), "--limit", "50", "--quiet", "--threads", "1"])
    card = checkpoint_files.read_card(folder)
    assert card["sha256"] == new_sha and "test_accuracy" in card["metrics"]
    assert {p.name for p in folder.iterdir()} >= {evaluate.TEST_FEATURES_FILE, evaluate.TRAIN_FEATURES_FILE}


def test_a_card_write_into_a_version_swapped_out_meanwhile_is_refused(tmp_path, monkeypatch):
    """The sha256 matched when the writer looked, and a save swapped the folder before its card
    landed: the write went into the old version, and the writer is told so."""
    save_version(tmp_path / "m", 1)
    sha = checkpoint_files.read_card(tmp_path / "m")["sha256"]
    write = checkpoint_files._write_new

    def write_after_a_save(*args, **kwargs):
        monkeypatch.setattr(checkpoint_files, "_write_new", write)
        save_version(tmp_path / "m", 2)
        return write(*args, **kwargs)
    monkeypatch.setattr(checkpoint_files, "_write_new", write_after_a_save)
    with pytest.raises(checkpoint_files.CheckpointError, match="was replaced by a new version while its card was"):
        checkpoint_files.update_card(tmp_path / "m", weights_sha256=sha, metrics={"fid": 1.0})
    assert loaded_version(tmp_path / "m") == 2 and "metrics" not in checkpoint_files.read_card(tmp_path / "m")
