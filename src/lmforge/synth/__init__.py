"""`lmforge synth`: data from a stronger model (see `run.py`)."""
