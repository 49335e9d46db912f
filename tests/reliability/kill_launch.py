"""Run launch.py, killing the process with SIGKILL at a chosen point (``KILL_AT``).

``KILL_AT=<where>:<n>`` kills on the n-th call (0-based) of one real function of the
pipeline, in this process; the basic launcher runs every job of a multirun here, so
this is a kill -9 of the whole sweep at that phase of that job:

* ``load``: loading a job's model;      * ``capture``: inside the calibration forward pass;
* ``wandb``: after W&B init, mid-logging (an unfinished run is left);
* ``indexed``: after results.json is written, before the index and the sweep table;
* ``summary``: while the end-of-sweep summary is built.
"""
import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import topovlm.capture  # noqa: E402 - after the sys.path set-up above
import topovlm.runner  # noqa: E402 - after the sys.path set-up above
import topovlm.summary  # noqa: E402 - after the sys.path set-up above
import topovlm.tracking  # noqa: E402 - after the sys.path set-up above

TARGETS = {
    "load": (topovlm.runner, "load_model"),
    "capture": (topovlm.capture, "run_capture"),
    "wandb": (topovlm.tracking.WandbRun, "log"),
    "indexed": (topovlm.runner, "_register_completed"),
    "summary": (topovlm.summary, "build_summary"),
}

where, _, nth = os.environ.get("KILL_AT", "").partition(":")
if where:
    owner, name = TARGETS[where]
    original = getattr(owner, name)
    calls = [0]

    def killing(*args, **kwargs):
        if calls[0] == int(nth or 0):
            print(f"KILL_AT {where}:{nth}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(owner, name, killing)

os.chdir(ROOT)
sys.argv = [str(ROOT / "launch.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "launch.py"), run_name="__main__")
