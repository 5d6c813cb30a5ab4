"""Checkpoints that are never half-written, and which one a run resumes from.

A checkpoint is written under `output_dir/.checkpoint-in-progress/` and renamed to `output_dir/checkpoint-N` only
when every process has finished writing it (files fsynced first), so a process killed at any moment leaves only
complete `checkpoint-N` directories. Deleting one (save_total_limit) first renames it out of sight, so a kill during
the deletion cannot leave a damaged checkpoint that looks valid.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from lmforge.errors import ConfigError, DiskFullError, disk_full_message, is_disk_full
from lmforge.runstatus import (  # noqa: F401 (checkpoint_step re-exported)
    COMPLETE_MARKER,
    checkpoint_step,
    is_complete,
    published_checkpoints,
    read_status_file,
)

logger = logging.getLogger(__name__)

LATEST = {"true", "latest", "last", "yes"}
STAGING_DIR = ".checkpoint-in-progress"
FINAL_STAGING_DIR = ".final-in-progress"
TRASH_PREFIX = ".deleting-"
RL_STATE_FILE = "rl_state.pt"  # the PPO/GRPO loop's optimizer, scheduler, RNG and log in its checkpoints
VALUE_HEAD_FILE = "value_head.safetensors"  # PPO's critic, beside the policy


def list_checkpoints(output_dir: str) -> tuple[list[str], list[str]]:
    """(complete checkpoints oldest first, incomplete ones: interrupted while being written)."""
    if not os.path.isdir(output_dir):
        return [], []
    found = published_checkpoints(output_dir)
    staging = os.path.join(output_dir, STAGING_DIR)
    unfinished = [os.path.join(staging, name) for name in sorted(os.listdir(staging))] if os.path.isdir(staging) else []
    return ([p for _, p in found if is_complete(p)],
            [p for _, p in found if not is_complete(p)] + unfinished)


def resolve_resume(output_dir: str, resume_from_checkpoint: str | None) -> str | None:
    """`true` -> the newest complete checkpoint in output_dir (a fresh start, with a warning, if there is none);
    a path -> that checkpoint (which must exist and be complete); unset -> none."""
    complete, incomplete = list_checkpoints(output_dir)
    last = complete[-1] if complete else None
    if resume_from_checkpoint is None:
        if last:
            logger.warning("output_dir '%s' already holds %s; this run starts again from step 0 (set "
                           "resume_from_checkpoint=true to continue it).", output_dir, os.path.basename(last))
        return None
    for path in incomplete:
        logger.warning("Ignoring the incomplete checkpoint %s (the run was stopped while writing it).", path)
    if resume_from_checkpoint.lower() in LATEST:
        if last is None:
            logger.warning("resume_from_checkpoint=true, but '%s' holds no complete checkpoint yet: starting from "
                           "step 0.", output_dir)
        else:
            logger.info("Resuming from %s", last)
        return last
    inside = os.path.join(output_dir, resume_from_checkpoint)
    if not os.path.isdir(resume_from_checkpoint) and os.path.isdir(inside):
        resume_from_checkpoint = inside  # a checkpoint named by its directory inside output_dir
    if not os.path.isdir(resume_from_checkpoint):
        raise ConfigError(f"Config error: resume_from_checkpoint '{resume_from_checkpoint}' is not a directory.")
    if not is_complete(resume_from_checkpoint):
        raise ConfigError(f"Config error: resume_from_checkpoint '{resume_from_checkpoint}' is not a complete "
                          f"checkpoint (it has no {COMPLETE_MARKER}).")
    return resume_from_checkpoint


def staging_root(output_dir: str) -> str:
    return os.path.join(output_dir, STAGING_DIR)


def final_staging(output_dir: str) -> str:
    return os.path.join(output_dir, FINAL_STAGING_DIR)


def clear_leftovers(output_dir: str) -> None:
    """Remove what an interrupted run left unfinished: a checkpoint being written, one being deleted."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if name in (STAGING_DIR, FINAL_STAGING_DIR) or name.startswith(TRASH_PREFIX):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(path) for name in files)


@contextmanager
def staged_write(staged: str, output_dir: str) -> Iterator[None]:
    """Writing `staged` (a checkpoint or final model on its way into output_dir): if the disk fills, the partial
    directory goes (what is published stays as it was) and the run ends with a DiskFullError that says where, how
    much is free and about how much the write needs (the newest complete checkpoint's size, or what was written)."""
    try:
        yield
    except Exception as err:
        if not is_disk_full(err):
            raise
        written = tree_bytes(staged) if os.path.isdir(staged) else 0
        shutil.rmtree(staged, ignore_errors=True)
        parent = os.path.dirname(staged)
        if os.path.basename(parent) == STAGING_DIR and os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
        complete, _ = list_checkpoints(output_dir)
        needed = max(tree_bytes(complete[-1]) if complete else 0, written) or None
        kept = (f" The previous checkpoint {complete[-1]} is kept: free some space, then resume with "
                f"`resume_from_checkpoint: true`." if complete else " Nothing was published: free some space and "
                "start again.")
        raise DiskFullError(disk_full_message(staged, needed) + kept) from None


def _fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _delete(path: str) -> None:
    """Rename out of sight first (atomic), then delete."""
    trash = os.path.join(os.path.dirname(path), TRASH_PREFIX + os.path.basename(path))
    if os.path.exists(trash):
        shutil.rmtree(trash)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def publish(staged: str, final: str) -> None:
    """Make a fully written checkpoint visible under its final name (replacing an older one of the same step)."""
    _fsync_tree(staged)
    if os.path.exists(final):
        _delete(final)
    os.replace(staged, final)
    _fsync_dir(os.path.dirname(final))
    if not os.listdir(os.path.dirname(staged)):
        os.rmdir(os.path.dirname(staged))


def rotate(output_dir: str, limit: int | None, protected: list[str | None]) -> list[str]:
    """Keep the `limit` newest complete checkpoints plus the protected ones (the one this run resumed from, the
    best one); delete the rest. Returns the deleted paths."""
    if not limit or limit <= 0:
        return []
    complete, _ = list_checkpoints(output_dir)
    keep = {os.path.realpath(p) for p in complete[-limit:]}
    keep |= {os.path.realpath(p) for p in protected if p}
    deleted = [p for p in complete if os.path.realpath(p) not in keep]
    for path in deleted:
        _delete(path)
        logger.info("Deleted %s (save_total_limit=%d)", path, limit)
    return deleted


_WEIGHTS = re.compile(r"^(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")


def replace_files(staged: str, target: str) -> None:
    """Move a saved model's files into `target`, each replacing its namesake whole (os.replace), then remove weight
    files of an earlier save that the new one does not have (a sharded save replacing a single file)."""
    _fsync_tree(staged)
    new = set(os.listdir(staged))
    for name in sorted(new):
        destination = os.path.join(target, name)
        if os.path.isdir(destination):
            shutil.rmtree(destination)
        os.replace(os.path.join(staged, name), destination)
    for name in os.listdir(target):
        if name not in new and _WEIGHTS.match(name):
            os.unlink(os.path.join(target, name))
    os.rmdir(staged)
    _fsync_dir(target)


def finished_at(output_dir: str, max_steps: int, num_train_epochs: float) -> int | None:
    """The step a finished run in `output_dir` ended at, when resuming it would train nothing more: its final state
    (trainer_state.json beside the final model) reached `max_steps`, or (`max_steps` unset) it planned as many
    epochs as asked now and trained all its steps. None while the run is unfinished or asked to go further."""
    if read_status_file(output_dir).get("status") != "finished":
        return None
    try:
        with open(os.path.join(output_dir, COMPLETE_MARKER), encoding="utf-8") as fh:
            state = json.load(fh)
        step = int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if max_steps and max_steps > 0:
        return step if step >= max_steps else None
    planned = state.get("max_steps")
    same_epochs = state.get("num_train_epochs") == num_train_epochs
    return step if planned and step >= planned and same_epochs else None
