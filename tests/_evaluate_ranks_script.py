"""Run by test_evaluate_scores.py, with or without torchrun: evaluate with scores and an lr search; rank 0
writes JSON."""
import json
import sys

import ddmetrics as ddm
from ddmetrics import distributed
from ddmetrics.evaluate import random_subset

created = distributed.init_from_env()
splits = ddm.data.load("digits", seed=0)
syn = random_subset(splits.train, 2, seed=11)
report = ddm.evaluate(syn, splits.test, train_set=splits.train, protocol="hard", runs=2, epochs=3, full_epochs=1,
                      seed=3, scores=True, lr_search=(0.01, 0.05), val_set=splits.val, progress=False)
rank, world = distributed.world()
if rank == 0:
    doc = report.to_dict()
    doc.pop("seconds")
    with open(sys.argv[1], "w") as fh:
        json.dump({"world": world, "report": doc}, fh)
distributed.shutdown(created)
