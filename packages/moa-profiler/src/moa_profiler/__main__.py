"""``python -m moa_profiler`` (and ``torchrun -m moa_profiler``): the calibrate and profile commands."""

from moa_profiler.cli import cli

if __name__ == "__main__":
    cli(prog_name="moa_profiler")
