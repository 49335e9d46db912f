"""``hydra/launcher=gpus``: one worker process per visible GPU, each pinned to its GPU.

joblib's launcher with two changes: ``n_jobs`` is the number of GPUs, and every job first
claims its worker's GPU (``topovlm.gpu_slots.claim_device``) before anything touches CUDA.
Workers are reused across jobs, so a worker keeps its GPU and its loaded model (the model
pool) from one job to the next; the jobs share the cache and the sweep dir as with joblib.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_joblib_launcher import _core
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

log = logging.getLogger(__name__)


def _pinned_job(devices: list[str], lock_dir: str, *args: Any) -> tuple[str, int, JobReturn]:
    from topovlm.gpu_slots import claim_device

    device = claim_device(devices, Path(lock_dir))
    return device, os.getpid(), _core.execute_job(*args)


class GpusLauncher(JoblibLauncher):
    def __init__(self, devices: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.devices = devices

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from joblib import Parallel, delayed
        from hydra.core.singleton import Singleton
        from hydra.core.utils import configure_log, filter_overrides, setup_globals
        from omegaconf import OmegaConf

        from topovlm.errors import ConfigError
        from topovlm.gpu_slots import visible_devices

        setup_globals()
        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        devices = visible_devices(OmegaConf.to_container(self.devices) if OmegaConf.is_config(self.devices)
                                  else self.devices)
        if not devices:
            raise ConfigError("hydra/launcher=gpus: no GPU is visible (CUDA_VISIBLE_DEVICES and torch count none); "
                              "name them with hydra.launcher.devices=[0,1] or use hydra/launcher=joblib")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        joblib_cfg = dict(self.joblib, n_jobs=len(devices), backend="loky")
        _core.process_joblib_cfg(joblib_cfg)
        log.info("%d jobs on %d GPUs (%s), one worker each; sweep dir %s", len(job_overrides), len(devices),
                 ",".join(devices), sweep_dir)
        state = Singleton.get_state()
        results = Parallel(**joblib_cfg)(
            delayed(_pinned_job)(devices, str(sweep_dir / ".gpus"), initial_job_idx + idx, overrides,
                                 self.hydra_context, self.config, self.task_function, state)
            for idx, overrides in enumerate(job_overrides))
        for idx, (device, pid, _) in enumerate(results):
            log.info("\t#%d on GPU %s (worker %d): %s", initial_job_idx + idx, device, pid,
                     " ".join(filter_overrides(job_overrides[idx])))
        return [run for _, _, run in results]
