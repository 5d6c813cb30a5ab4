"""What `lmforge train` records of a run while it goes: `run_status.json` and `train.log` in its output_dir (see
lmforge.runstatus), for whoever lists runs (the web UI's Runs tab)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from lmforge import runstatus
from lmforge.config.schema import RunConfig
from lmforge.config.secrets import masked_argv


@contextlib.contextmanager
def run_record(cfg: RunConfig, speaks_for_run: bool) -> Iterator[dict[str, Any]]:
    """The run's status file and its own log (`train.log`), kept by the process that speaks for the run: running,
    then finished, stopped (a signal: the last checkpoint holds it) or failed (with the error). The block fills the
    yielded record: the stage's metrics (`stopped_at_step` when a signal stopped it), or `launcher_exit`."""
    record: dict[str, Any] = {}
    if not speaks_for_run:
        yield record
        return
    output_dir = cfg.training.output_dir
    handler = runstatus.log_to_file(output_dir)
    runstatus.write_status(output_dir, "running", command=" ".join(masked_argv(sys.argv)),
                           stage=cfg.finetuning.stage, model=cfg.model.model_name_or_path,
                           dataset=cfg.data.dataset, resumed=cfg.training.resume_from_checkpoint is not None)
    status, error = "failed", None
    # SIGTERM before the training loop handles it (loading the model and data) ends the run as Ctrl-C does, so
    # that it is recorded as stopped rather than killed without a word
    main_thread = threading.current_thread() is threading.main_thread()  # (only it may set handlers)
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
    try:
        yield record
        if "launcher_exit" in record:
            status = "failed" if record["launcher_exit"] else \
                "finished" if runstatus.final_model_written(output_dir) else "stopped"
        else:
            status = "stopped" if "stopped_at_step" in record else "finished"
    except KeyboardInterrupt:
        status = "stopped"
        raise
    except BaseException as err:
        error = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)
        runstatus.write_status(output_dir, status, **({"error": error} if error else {}))
        logging.getLogger("lmforge").removeHandler(handler)
        handler.close()
