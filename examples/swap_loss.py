"""Swap the distance in one line: the same WMDD pipeline with three different metrics.

Run: python examples/swap_loss.py
"""
import ddmetrics as ddm

splits = ddm.data.load("digits", seed=0)
for loss in ["wasserstein", "sliced", "mmd"]:  # <- the one line that changes the metric
    distiller = ddm.Distiller(method="wmdd", loss=loss, ipc=1, seed=0, iterations=100)
    syn = distiller.fit(splits.train, progress=False)
    report = ddm.evaluate(syn, splits.test, teacher=distiller.teacher_, runs=1, epochs=100, progress=False)
    print(f"{loss:12s} accuracy {100 * report.mean:.1f}%")
