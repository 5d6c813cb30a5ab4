"""A run never clobbers another: an output_dir that holds a run is continued (`resume_from_checkpoint`) or, when
asked (`overwrite_output_dir`), cleared of what lmforge wrote there, never silently reused.

Why not the Trainer's behaviour: it appends to nothing and checks nothing, so a second run rewrites
trainer_log.jsonl, replaces same-step checkpoints and mixes its checkpoints with the first run's (resume would then
pick a checkpoint of the wrong run)."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket

from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lmforge.config.schema import RUN_CONFIG_FILE
from lmforge.data.stream import STATE_FILE as STREAM_STATE_FILE
from lmforge.errors import ConfigError
from lmforge.runlog import LOG_FILE
from lmforge.runstatus import RUN_LOG_FILE, STATUS_FILE
from lmforge.train.predict import PREDICTIONS_FILE, RESULTS_FILE
from lmforge.train.runtime.checkpoint import (
    COMPLETE_MARKER,
    FINAL_STAGING_DIR,
    RL_STATE_FILE,
    STAGING_DIR,
    TRASH_PREFIX,
    VALUE_HEAD_FILE,
)
from lmforge.train.samples import SAMPLES_FILE

logger = logging.getLogger(__name__)

CONFIG_FILE = RUN_CONFIG_FILE  # the run's config, as it was given (secrets masked)
LOCK_FILE = ".lmforge-run.lock"  # held (flock) by the run writing to output_dir
LOCK_ENV = "LMFORGE_RUN_LOCK"  # PID:lock file, for the processes a launcher starts: their run's lock is held by it

# What shows that an lmforge run was in output_dir, and what such a run writes there besides (run files by lmforge,
# model and tokenizer files by transformers/peft/tokenizers, tracker folders).
_MARKERS = [re.escape(n) for n in (LOG_FILE, CONFIG_FILE, STAGING_DIR, FINAL_STAGING_DIR)]
_MARKERS += [rf"{PREFIX_CHECKPOINT_DIR}-\d+", re.escape(TRASH_PREFIX) + ".*"]
_ALSO_WRITTEN = [re.escape(n) for n in (COMPLETE_MARKER, TRAINING_ARGS_NAME, SAMPLES_FILE, PREDICTIONS_FILE,
                                        RESULTS_FILE, STREAM_STATE_FILE, RL_STATE_FILE, VALUE_HEAD_FILE,
                                        STATUS_FILE, RUN_LOG_FILE)]
_ALSO_WRITTEN += [r"(all|train|eval)_results\.json", r"training_.*\.png", "runs", "swanlog", r"config\.json",
                  r"generation_config\.json", r"(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)"
                  r"(\.index\.json)?", r"adapter_config\.json", r"tokenizer(_config)?\.json", r"tokenizer\.model",
                  r"special_tokens_map\.json", r"added_tokens\.json", r"vocab\.json", r"merges\.txt",
                  r"chat_template\.(jinja|json)"]
_RUN_MARKERS = re.compile("^(" + "|".join(_MARKERS) + ")$")
_WRITTEN = re.compile("^(" + "|".join(_MARKERS + _ALSO_WRITTEN) + ")$")


def previous_run(output_dir: str) -> list[str]:
    """The entries of output_dir that show an lmforge run was there (empty for a new or foreign directory)."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir) if _RUN_MARKERS.match(name))


def claim_output_dir(output_dir: str, resuming: bool, overwrite: bool) -> None:
    """Refuse to start a new run where one already is (exit 2), unless it is resumed or `overwrite` clears it."""
    found = previous_run(output_dir)
    if not found or resuming:
        return
    if not overwrite:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise ConfigError(
            f"Config error: output_dir '{output_dir}' already holds a run ({shown}). Continue it with "
            f"`resume_from_checkpoint: true`, start it again with `overwrite_output_dir: true` (removes only what an "
            f"lmforge run wrote there), or choose another output_dir.")
    removed = [name for name in sorted(os.listdir(output_dir)) if _WRITTEN.match(name)]
    for name in removed:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    kept = len(os.listdir(output_dir))
    logger.warning("overwrite_output_dir: removed %d entries of the previous run from %s%s", len(removed), output_dir,
                   f" ({kept} other entries left as they were)" if kept else "")


class RunLock:
    """An exclusive lock on an output_dir for one run's life: `flock` on a lock file, so the kernel releases it when
    the holder exits in any way (a killed run leaves no stale lock, only the file, which the next run re-locks).

    Who holds it: the process that speaks for the run (the launcher of a multi-process run, or the first process
    under a bare torchrun). The launcher's workers find its PID and the path in $LMFORGE_RUN_LOCK and take nothing:
    they are its descendants and die with it."""

    def __init__(self, output_dir: str) -> None:
        os.makedirs(output_dir, exist_ok=True)
        self.path = os.path.join(output_dir, LOCK_FILE)
        self.fd: int | None = None
        held_by, _, path = os.environ.get(LOCK_ENV, "").partition(":")
        launched_by_holder = path == os.path.realpath(self.path) and held_by != str(os.getpid())
        if launched_by_holder or int(os.environ.get("RANK", "0")) != 0:
            return
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise ConfigError(f"Config error: output_dir '{output_dir}' is in use by another run ({holder}). "
                                  f"Wait for it to finish, stop it, or choose another output_dir.") from None
            if _same_file(fd, self.path):
                self.fd = fd
            else:  # the holder removed the file as we opened it: lock the one now there
                os.close(fd)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.environ[LOCK_ENV] = f"{os.getpid()}:{os.path.realpath(self.path)}"  # for the workers a launcher starts

    def release(self) -> None:
        """Remove the lock file and let go (removed first, while still held: a run that opens the old file finds it
        gone from the directory and takes the new one)."""
        if self.fd is None:
            return
        if _same_file(self.fd, self.path):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None
        os.environ.pop(LOCK_ENV, None)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    return text or "a process that has not yet written its PID"
