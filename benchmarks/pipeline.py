"""Pipeline overhead: ``python -m benchmarks.pipeline`` times ``dvc repro`` from scratch and a no-op one.

It clones the repository's committed HEAD into a temporary folder (so neither the working tree
nor its DVC cache, MLflow store or run cache is reused), runs ``dvc repro`` there on the
embedded default (synthetic) data, then ``dvc repro`` again with nothing changed, and prints
both wall-clock times. Stages run with this interpreter's environment first on PATH, as
``make repro`` does. Figures in benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.machine import load_average, machine_info, write_report

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    """Seconds ``command`` took in ``cwd``; its output goes to ``log``; a failure stops with its tail."""
    began = time.perf_counter()
    with log.open("ab") as out:
        done = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"error: {shlex.join(command)} failed in {cwd} (exit {done.returncode}):\n" + "\n".join(tail))
    return seconds


def measure(repo: Path, workdir: Path, noop_repeats: int) -> dict[str, object]:
    clone = workdir / "glioseg"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=clone, check=True, capture_output=True, text=True
    ).stdout.strip()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the clone's own store, as a fresh checkout has
    dvc = [str(bin_dir / "dvc"), "repro"]
    log = workdir / "repro.log"
    scratch = timed(dvc, clone, env, log)
    noop = [timed(dvc, clone, env, log) for _ in range(noop_repeats)]
    return {"commit": commit, "repro_from_scratch_s": round(scratch, 1), "noop_repro_s": [round(s, 2) for s in noop]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--noop-repeats", type=int, default=3, help="how many no-op `dvc repro` to time")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/pipeline.json"), help="where to write results")
    args = parser.parse_args(argv)
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="glioseg-pipeline-") as tmp:
        figures = measure(REPO, Path(tmp), args.noop_repeats)
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.pipeline " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(torch.device("cpu"), load_start),
        **figures,
    }
    noop = report["noop_repro_s"]
    print("| commit | `dvc repro` from scratch | no-op `dvc repro` (each run) |\n|---|---|---|")
    print(
        f"| {report['commit'][:7]} | {report['repro_from_scratch_s']:.0f} s "
        f"({report['repro_from_scratch_s'] / 60:.1f} min) | {' / '.join(f'{s:.1f} s' for s in noop)} |"
    )
    write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
