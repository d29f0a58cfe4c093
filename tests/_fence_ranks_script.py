"""Run by test_distributed.py under torchrun: both ranks leave a gloo barrier, rank 1 then lingers before
the shutdown fence; each rank writes when it entered and left the fence (CLOCK_MONOTONIC, one machine)."""
import json
import sys
import time

from ddmetrics import distributed

created = distributed.init_from_env()
rank, _ = distributed.world()
distributed.barrier()
if rank == 1:
    time.sleep(1.0)  # a rank still busy after the last barrier (its last gloo message in flight, say)
entered = time.monotonic()
distributed._fence()
left = time.monotonic()
with open(f"{sys.argv[1]}.{rank}", "w") as fh:
    json.dump({"entered": entered, "left": left}, fh)
distributed.shutdown(created)
