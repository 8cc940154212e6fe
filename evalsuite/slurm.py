"""Any evalsuite command as a Slurm job, through submitit.

``evalsuite slurm --nodes 2 --gpus-per-node 8 -- pretrain -b pixio-h16 --data /data/images --epochs 400``
starts one Slurm task per GPU. Each task exports the ``env://`` variables of torch.distributed
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) from Slurm's, which is
exactly what torchrun gives a process, then runs the command; so every command that runs under
torchrun runs here unchanged, and a 2-task job matches a 2-process torchrun run.

A job that is preempted or reaches its time limit is requeued with the same command. Pretraining
continues from its last checkpoint (``--resume`` is added; checkpoint often with ``--save-every``),
an evaluation cell from its work dir, and a finished cell is skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import submitit

CLUSTERS = ("slurm", "local", "debug")  # local/debug: the same job on this machine, to try a submission


@dataclass
class SlurmOptions:
    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # default: one per GPU, or one without GPUs
    cpus_per_task: int = 10
    mem_gb: int | None = None
    timeout_min: int = 24 * 60
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    job_name: str = "evalsuite"


def slurm_available() -> bool:
    return shutil.which("sbatch") is not None


def requeue_argv(argv: list[str]) -> list[str]:
    """The command a requeued job runs: pretraining must continue its checkpoint, not refuse it."""
    if argv and argv[0] == "pretrain" and "--resume" not in argv:
        return [*argv, "--resume"]
    return list(argv)


class Command(submitit.helpers.Checkpointable):
    """The submitted callable: ``python -m evalsuite ARGV`` in each Slurm task."""

    def __init__(self, argv: list[str]):
        self.argv = list(argv)

    def __call__(self) -> None:
        # LOCAL_RANK picks the GPU (cuda:LOCAL_RANK) as under torchrun, so every GPU stays visible.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        subprocess.run([sys.executable, "-m", "evalsuite", *self.argv], check=True)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(Command(requeue_argv(self.argv)))


def submit(argv: list[str], options: SlurmOptions, folder: Path, cluster: str = "slurm") -> submitit.Job:
    """Submit ``evalsuite ARGV``; logs and submitit's files go to ``folder/<job id>_*``."""
    if not argv or argv[0] == "slurm":
        raise ValueError("give the evalsuite command to run after '--', e.g. `evalsuite slurm -- run -b mae-b16 -t imagenet`")
    return _executor(options, folder, cluster).submit(Command(argv))


def submit_array(argvs: list[list[str]], options: SlurmOptions, folder: Path, cluster: str = "slurm") -> list[submitit.Job]:
    """One job per command, as one Slurm job array (``evalsuite sweep --executor slurm``)."""
    executor = _executor(options, folder, cluster)
    with executor.batch():
        jobs = [executor.submit(Command(argv)) for argv in argvs]
    return jobs


def _executor(options: SlurmOptions, folder: Path, cluster: str) -> submitit.AutoExecutor:
    if cluster not in CLUSTERS:
        raise ValueError(f"cluster must be one of {CLUSTERS}, got {cluster!r}")
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ValueError("sbatch not found: submit from a Slurm login node, or pass --cluster local to try the job here")
    if options.nodes > 1 and cluster != "slurm":
        raise ValueError(f"--cluster {cluster} runs on this machine: one node only")
    executor = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster=cluster)
    executor.update_parameters(
        name=options.job_name, nodes=options.nodes, gpus_per_node=options.gpus_per_node,
        tasks_per_node=options.tasks_per_node or max(1, options.gpus_per_node), cpus_per_task=options.cpus_per_task,
        timeout_min=options.timeout_min, **({"mem_gb": options.mem_gb} if options.mem_gb else {}),
        slurm_partition=options.partition, slurm_account=options.account, slurm_qos=options.qos,
        slurm_constraint=options.constraint, slurm_signal_delay_s=120,
    )
    return executor
