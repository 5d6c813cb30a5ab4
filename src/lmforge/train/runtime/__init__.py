"""The run machinery every stage shares: atomic checkpoints and rotation (checkpoint), resilience (graceful stop,
non-finite guard, what each Trainer adds: resilience, signals, guard), a run never clobbering another
(output_dir), the run log callback, trackers and plots."""
