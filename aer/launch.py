"""Process glue for training jobs: DDP ranks under a Hydra multirun, and process state put back after each job.

Lightning starts DDP ranks > 0 by re-running the script (`_SubprocessScriptLauncher`), with a
command built by its `_hydra_subprocess_cmd` when Hydra is in use. That command re-runs
sys.argv, which in a multirun is the whole sweep (`-m a=1,2`): each rank would start a sweep of
its own. Lightning has no public hook for that command, so `ddp_launch` replaces the function for
the duration of one fit and puts Lightning's back afterwards.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
import pytorch_lightning.strategies.launchers.subprocess_script as subprocess_script
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_original_cwd
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

# Set in os.environ by Lightning's DDP launch; a multirun's next job must start without them.
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra overrides that belong to the sweep, not to the job a DDP rank re-runs
_SWEEP_OVERRIDES = ("hydra.mode", "hydra.run.", "hydra.sweep.", "hydra.job.name", "hydra.output_subdir",
                    "hydra/launcher", "hydra/sweeper", "hydra.launcher.", "hydra.sweeper.")
# The pid of the process running a multirun (set by aer.sweep.RunDirGuard), for jobs in worker processes of it
SWEEP_PID = "AER_SWEEP_PID"
_VALUE_FLAGS = ("-cp", "-cn", "-cd", "--config-path", "--config-name", "--config-dir")


def ddp_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command (and cwd) that re-runs only the current multirun job, in its own output dir."""
    import __main__

    hc = HydraConfig.get()
    script = ["-m", __main__.__spec__.name] if __main__.__spec__ else [str(Path(get_original_cwd(), sys.argv[0]))]
    flags = [a for i, a in enumerate(sys.argv[1:], 1)
             if a.startswith(("--config-", "-c")) or sys.argv[i - 1] in _VALUE_FLAGS]
    keep = [o for o in hc.overrides.hydra if not o.lstrip("+~").startswith(_SWEEP_OVERRIDES)]
    cmd = [sys.executable, *script, *flags, *hc.overrides.task, *keep,
           f'hydra.run.dir="{hc.runtime.output_dir}"', f"hydra.job.name={hc.job.name}_ddp_process_{local_rank}",
           "hydra.output_subdir=null"]
    return cmd, get_original_cwd()


def _needs_job_command(trainer: pl.Trainer) -> bool:
    """True for rank 0 of a DDP run that Lightning will start by re-running the script, in a Hydra multirun."""
    launcher = getattr(trainer.strategy, "launcher", None)
    if (not isinstance(launcher, _SubprocessScriptLauncher) or not HydraConfig.initialized()
            or trainer.strategy.cluster_environment.creates_processes_externally):
        return False  # one process, ranks started by the cluster (srun, torchrun), or a rank > 0 itself
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return False  # Lightning's own command re-runs this single run in its run dir
    if not str(hc.launcher.get("_target_", "")).endswith("BasicLauncher"):
        raise ValueError(
            f"trainer.strategy={trainer.strategy.__class__.__name__} with {trainer.num_devices} devices starts its "
            f"other ranks by re-running the script, which a {hc.launcher._target_.rsplit('.', 1)[-1]} job cannot do: "
            f"sweep DDP runs with the basic launcher (one job after another), or on SLURM with "
            f"hydra/launcher=slurm_ddp (one SLURM task per device: SLURM starts every rank)")
    return True


@contextlib.contextmanager
def ddp_launch(trainer: pl.Trainer) -> Iterator[None]:
    """Around `trainer.fit`: DDP ranks of a multirun job re-run that job only; Lightning's command is restored."""
    if not _needs_job_command(trainer):
        yield
        return
    original = subprocess_script._hydra_subprocess_cmd
    subprocess_script._hydra_subprocess_cmd = ddp_child_command
    try:
        yield
    finally:
        subprocess_script._hydra_subprocess_cmd = original


def _finish_wandb() -> None:
    """Lightning's WandbLogger leaves its run open, and a sweep's next job would log into it. After
    `finish`, W&B's service process still holds the run's transaction log (run-*.wandb) and closes it
    when it likes: once, under load, CI read a finished job's log holding nothing but its header.
    Tearing the service down waits for it to write and close every log it holds, so a job's log is
    whole when the job returns; the next job starts a service of its own (about a second)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
        wandb.teardown()


# Training jobs this process has finished (a multirun's jobs run one after another in one process).
_jobs_done = 0


@contextlib.contextmanager
def job_state(threads: int | None) -> Iterator[None]:
    """One training job's process state: torch's CPU threads set to `threads` (None: as they are), and
    afterwards the threads, the DDP environment, the process group and any W&B run put back as found,
    so that a multirun's next job (or a DDP run) starts clean.

    A job after the first in this process first collects the garbage of the one before: its trainer,
    model and data arrays are left in reference cycles (Lightning's trainer and its callbacks), and
    Python's collector, which compares young objects with the ~400k long-lived ones, would reach them
    only after many more jobs: without it a sweep's memory grew by every job's data and model (80 MB
    a report_fc job, 691 to 1,096 MB over report_init's six). One full collection costs ~0.2 s a job.
    """
    global _jobs_done
    if _jobs_done:
        gc.collect()
    env = {k: os.environ.get(k) for k in DDP_ENV}
    num_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        import torch.distributed as dist

        _finish_wandb()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch.set_num_threads(num_threads)
        _jobs_done += 1


_watched: list[int] = []


def sweep_process() -> str:
    """The value of SWEEP_PID for this process: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def end_with_sweep() -> None:
    """A sweep's job in a worker process that the sweep's process started (joblib's loky workers,
    submitit_local): the worker is killed as soon as the sweep's process is gone, or at once when it is gone
    already, so that a SIGKILL of the sweep leaves no job training on as an orphan. Jobs on other machines
    (SLURM) and in the sweep's own process are left alone."""
    host, _, pid = os.environ.get(SWEEP_PID, "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid() or _watched:
        return
    parent = int(pid)
    if os.getppid() != parent:
        try:
            os.kill(parent, 0)
            return  # not the sweep's own worker
        except ProcessLookupError:
            os.kill(os.getpid(), signal.SIGKILL)  # the sweep died before this job started
    _watched.append(parent)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="aer-end-with-sweep", daemon=True).start()
