"""Score, prune and evaluate: ``python launch.py -m scorer=topo,cosine sparsity=0.1,0.2,0.3``.

A multirun exits 1 when any of its jobs failed (each is a failed row of results.jsonl
and of the summary's failures section); the other jobs still ran.
"""
import sys
import warnings

import hydra
from omegaconf import DictConfig

from topovlm.config import register_configs

register_configs()
# conf/hydra/launcher/joblib.yaml extends the plugin's config of the same name on purpose
warnings.filterwarnings("ignore", message=".*is validated against ConfigStore schema.*")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from topovlm.app import main as run

    return run(cfg)


if __name__ == "__main__":
    main()
    from topovlm.callbacks import exit_status

    sys.exit(exit_status())
