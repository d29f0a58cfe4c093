"""Start-up time of ``import ddmetrics`` and of ``ddmetrics --help`` / ``ddmetrics distill --help``,
each in a fresh interpreter (the cost a user pays before anything runs), with the heavy modules
each one loads.

The package imports its backends lazily, so the bare import and the top-level help load no torch,
KeOps, GeomLoss or matplotlib; ``distill --help`` names the method presets and needs torch.
Medians of ``--repeats`` fresh processes, the three commands interleaved.

Usage::

    .venv/bin/python benchmarks/startup_time.py            # writes results/startup_time.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional

import _common

HEAVY = ("torch", "pykeops", "keopscore", "geomloss", "matplotlib", "ot", "scipy", "sklearn")

#: what each case runs in a fresh ``python -c``; each prints the heavy modules it loaded, as JSON
CASES: Dict[str, str] = {
    "import ddmetrics": "import ddmetrics",
    "ddmetrics --help": "from ddmetrics.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    "ddmetrics distill --help": "from ddmetrics.cli import main\ntry:\n    main(['distill', '--help'])\n"
                                "except SystemExit:\n    pass",
}


def run_case(code: str) -> Dict[str, object]:
    """Wall time of one fresh interpreter running ``code``, and the heavy modules it imported."""
    probe = (f"import sys, json, io, contextlib\nbuf = io.StringIO()\nwith contextlib.redirect_stdout(buf):\n"
             + "".join("    " + line + "\n" for line in code.splitlines())
             + f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    seconds, proc = _common.stopwatch(lambda: subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                                             text=True, check=True))
    return {"seconds": seconds, "loaded": json.loads(proc.stdout.strip().splitlines()[-1]),
            "stderr": proc.stderr.strip()}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="fresh processes per case")
    p.add_argument("--out", default=os.path.join(_common.RESULTS, "startup_time"), help="output prefix")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    last: Dict[str, Dict[str, object]] = {}

    def once(name: str):
        def go() -> float:
            last[name] = run_case(CASES[name])
            return float(last[name]["seconds"])
        return go

    times = _common.interleaved_repeats({name: once(name) for name in CASES}, args.repeats)
    rows = [{"case": name, "median_s": _common.median(times[name]), "times_s": times[name],
             "loaded": last[name]["loaded"], "warning_printed": "Warning" in str(last[name]["stderr"])}
            for name in CASES]
    doc = {"command": _common.command_line(), "machine": _common.machine_info(), "date": _common.now_utc(),
           "repeats": args.repeats, "rows": rows}
    _common.write_json(args.out + ".json", doc)
    table = _common.markdown_table(
        ["command", "median (s)", "heavy modules loaded", "KeOps/CUDA warning"],
        [(r["case"], f"{r['median_s']:.3f}", ", ".join(r["loaded"]) or "none", "yes" if r["warning_printed"] else "no")
         for r in rows], align="lrll")
    m = doc["machine"]
    _common.write_lines(args.out + ".md", [
        "# Start-up time", "", f"Command: `{doc['command']}`", "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} CPUs, torch {m['torch']}; {doc['date']}. Each row is the "
        f"median wall time of {args.repeats} fresh interpreters (the cases interleaved), the interpreter's own "
        "start included.", "", *table])
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
