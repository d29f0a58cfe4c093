"""Run by test_distributed.py, with or without torchrun: distil and evaluate, rank 0 writes JSON."""
import json
import sys

import ddmetrics as ddm
from ddmetrics import distributed

created = distributed.init_from_env()
train_all = ddm.data.load("digits", seed=0)
keep = train_all.train.labels < 4
train = ddm.data.ArrayDataset(train_all.train.images[keep], train_all.train.labels[keep], 4)
keep_t = train_all.test.labels < 4
test = ddm.data.ArrayDataset(train_all.test.images[keep_t], train_all.test.labels[keep_t], 4)
# two batches of two classes (class_batch): each rank takes whole batches
syn = ddm.Distiller(method="dm", loss="sliced", ipc=2, seed=5, iterations=6, class_batch=2).fit(train, progress=False)
report = ddm.evaluate(syn, test, train_set=train, runs=3, epochs=4, full_epochs=1, seed=5, progress=False)
rank, world = distributed.world()
if rank == 0:
    with open(sys.argv[1], "w") as fh:
        json.dump({"world": world, "units": syn.meta["units"], "images": syn.images.flatten().tolist(),
                   "runs": report.runs,
                   "random": report.random_runs, "full": report.full}, fh)
distributed.shutdown(created)
