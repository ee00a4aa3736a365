"""Mutation testing of the guard code: does each test fail when the guard it names breaks?

For each guard module below, cosmic-ray makes every small change it knows (a comparison turned round, a number
moved, a branch's condition flipped, a `break` for a `continue`, ...) to the guard's functions, one at a time, and
runs the tests that hold that guard (a bounded selection, none of which exports a model or starts Ray). A mutant
is *killed* when a test fails (or hangs past the timeout), *survives* when all pass. It all happens in a scratch
copy of the working tree (tracked and untracked, not ignored, files), so the tree itself is never changed.

    .venv/bin/python scripts/mutation_test.py                      # every guard module
    .venv/bin/python scripts/mutation_test.py manifest http        # some of them
    .venv/bin/python scripts/mutation_test.py --json out.json      # also the full results (survivors' diffs)

Prints, per module, the mutants killed and survived and the kill rate, then each survivor (line, operator, diff).
docs/testing.md has the last run's figures, its time, and why each survivor is harmless or which test kills it.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Guard:
    """A module, the top-level names in it whose code is the guard (all of it when empty), and the pytest
    arguments that select the tests holding it."""

    module: str
    names: tuple[str, ...]
    tests: tuple[str, ...]
    what: str


GATE_MEAN_TEST = "test_the_gate_measures_the_mean_against_a_float64_mean_of_the_layer_maps"
GUARDS = {
    "manifest": Guard("runtime/stlpips_rt/io/manifest.py",
                      ("content_sha256", "file_sha256", "manifest_path", "_get", "read_provenance", "check_resume",
                       "write_manifest", "parquet_metadata", "MANIFEST_VERSION", "PARQUET_KEY", "RESUME_FIELDS"),
                      ("tests/test_manifest.py",
                       "tests/test_outputs.py::test_check_resume_names_each_field_that_differs"),
                      "the --resume refusal and the manifest of every output"),
    "cache": Guard("runtime/stlpips_rt/matrix/cache.py", ("entry_key", "FeatureCache"),
                   ("tests/test_feature_cache.py",), "the feature cache's keys, damaged entries and eviction"),
    "gate": Guard("export/stlpips_export/verify.py", ("ParityReport", "compare", "spatial_mean_error"),
                  ("tests/test_gate.py", f"tests/test_spatial_mean.py::{GATE_MEAN_TEST}"),
                  "the export gate's measurements and verdict"),
    "precision": Guard("runtime/stlpips_rt/precision.py",
                       ("TOLERANCES", "SPATIAL_MEAN_MAX_REL", "float64_distance", "tolerance", "error_stats",
                        "rank_agreement"),
                       ("tests/test_gate.py", f"tests/test_spatial_mean.py::{GATE_MEAN_TEST}"),
                       "the comparisons and bounds the gate measures with"),
    "http": Guard("runtime/stlpips_rt/scale/http.py", (),
                  ("tests/test_serve_http.py",
                   "tests/test_serve_hardening.py::test_the_token_comes_from_the_file_or_the_environment",
                   "tests/test_serve_hardening.py::test_token_auth_checks_before_the_app_reads_anything",
                   "tests/test_serve_hardening.py::test_the_token_check_refuses_every_malformed_authorization",
                   "tests/test_serve_hardening.py::test_grpc_calls_need_the_token_too"),
                  "the service's request limits, request guard, token check and error mapping"),
    "layout": Guard("tests/layout_rules.py", (), ("tests/test_layout.py", "-k", "rules or import or floor or runtime "
                                                   "or docstring"),
                    "the layout test's rules"),
}


def scratch_copy(destination: Path) -> None:
    """The working tree's files (tracked, and untracked but not ignored) under ``destination``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def line_ranges(path: Path, names: tuple[str, ...]) -> list[str]:
    """``start-end`` of each top-level definition or assignment named in ``names`` (all of the module if empty)."""
    if not names:
        return [f"1-{len(path.read_text().splitlines())}"]
    found = {}
    for node in ast.parse(path.read_text()).body:
        targets = [node.name] if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) else \
            [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else \
            [node.target.id] if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) else []
        for target in targets:
            found[target] = f"{node.lineno}-{node.end_lineno}"
    missing = sorted(set(names) - found.keys())
    if missing:
        raise SystemExit(f"{path}: no top-level {', '.join(missing)} (update GUARDS in {Path(__file__).name})")
    return [found[n] for n in names]


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the module's annotations are: with ``from __future__ import annotations`` they are never evaluated,
    so a mutant there cannot change what runs (``int | None`` -> ``int + None``)."""
    spans = []
    for node in ast.walk(ast.parse(path.read_text())):
        found = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            found = [a.annotation for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                                             arguments.vararg, arguments.kwarg) if a is not None] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            found = [node.annotation]
        spans += [((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset)) for n in found if n is not None]
    return spans


def skip_annotations(session: Path, module: Path) -> int:
    """Mark the session's mutants inside annotations as skipped; returns how many."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    if "from __future__ import annotations" not in module.read_text():
        return 0
    spans = annotation_spans(module)
    skipped = []
    with use_db(str(session)) as db:
        for item in db.pending_work_items:
            start = tuple(item.mutations[0].start_pos)
            if any(a <= start < b for a, b in spans):
                skipped.append(item.job_id)
        if skipped:
            db.set_multiple_results(skipped, WorkResult(output="in an annotation (never evaluated)",
                                                        worker_outcome=WorkerOutcome.SKIPPED))
    return len(skipped)


def run_guard(key: str, guard: Guard, scratch: Path, work: Path) -> dict:
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(scratch / "runtime"), str(scratch / "export")]),
           "PYTHONDONTWRITEBYTECODE": "1"}  # a stale .pyc of an earlier mutant must never stand in for this one
    # plugins the selected tests do not use cost a second or more per mutant
    tests = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:schemathesis", "-p", "no:anyio",
             *guard.tests]
    start = time.monotonic()
    baseline = subprocess.run(tests, cwd=scratch, env=env, capture_output=True, text=True)
    baseline_s = time.monotonic() - start
    if baseline.returncode != 0:
        raise SystemExit(f"{key}: the tests fail before any mutation:\n{baseline.stdout[-3000:]}")
    config = work / f"{key}.toml"
    session = work / f"{key}.sqlite"
    lines = line_ranges(scratch / guard.module, guard.names)
    command = " ".join(f"'{a}'" if " " in a else a for a in tests)
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{guard.module}"\n'
        f"timeout = {max(60.0, 5 * baseline_s):.0f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n\n'
        "[cosmic-ray.filters.line-filter.lines]\n"
        f'"{guard.module}" = {json.dumps(lines)}\n')
    bin_dir = Path(python).parent
    for step in (["cosmic-ray", "init", str(config), str(session)],
                 ["cr-filter-lines", str(session), "--config", str(config)]):
        subprocess.run([str(bin_dir / step[0]), *step[1:]], cwd=scratch, env=env, check=True, capture_output=True)
    in_annotations = skip_annotations(session, scratch / guard.module)
    subprocess.run([str(bin_dir / "cosmic-ray"), "exec", str(config), str(session)], cwd=scratch, env=env, check=True,
                   capture_output=True)
    dumped = subprocess.run([str(bin_dir / "cosmic-ray"), "dump", str(session)], cwd=scratch, env=env, check=True,
                            capture_output=True, text=True).stdout
    counts = {"killed": 0, "survived": 0, "incompetent": 0}
    survivors = []
    for line in filter(None, dumped.splitlines()):
        item, result = json.loads(line)
        if result is None or result.get("worker_outcome") == "skipped":
            continue
        outcome = result.get("test_outcome") or "incompetent"
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome == "survived":
            mutation = item["mutations"][0]
            survivors.append({"line": mutation["start_pos"][0], "operator": mutation["operator_name"],
                              "diff": "\n".join(d for d in (result.get("diff") or "").splitlines()
                                                if d.startswith(("+", "-")) and not d.startswith(("+++", "---")))})
    tested = counts["killed"] + counts["survived"]
    return {"module": guard.module, "what": guard.what, "tests": " ".join(guard.tests), **counts,
            "skipped_in_annotations": in_annotations,
            "kill_rate": counts["killed"] / tested if tested else None, "baseline_s": round(baseline_s, 1),
            "seconds": round(time.monotonic() - start, 1), "survivors": sorted(survivors, key=lambda s: s["line"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("guards", nargs="*", metavar="GUARD",
                        help=f"which guard modules (default: all): {', '.join(GUARDS)}")
    parser.add_argument("--json", type=Path, help="write the full results here")
    args = parser.parse_args()
    unknown = sorted(set(args.guards) - GUARDS.keys())
    if unknown:
        parser.error(f"no guard {', '.join(unknown)}; choose from {', '.join(GUARDS)}")
    chosen = args.guards or list(GUARDS)
    results = {}
    with tempfile.TemporaryDirectory(prefix="stlpips-mutation-") as tmp:
        scratch, work = Path(tmp) / "tree", Path(tmp) / "sessions"
        scratch.mkdir()
        work.mkdir()
        scratch_copy(scratch)
        for key in chosen:
            results[key] = run_guard(key, GUARDS[key], scratch, work)
            r = results[key]
            rate = "-" if r["kill_rate"] is None else f"{100 * r['kill_rate']:.1f}%"
            print(f"{key:<10} {r['module']:<40} killed {r['killed']:>4}  survived {r['survived']:>3}  "
                  f"incompetent {r['incompetent']:>2}  kill rate {rate:>6}  ({r['seconds']:.0f} s)", flush=True)
    killed = sum(r["killed"] for r in results.values())
    tested = killed + sum(r["survived"] for r in results.values())
    print(f"{'all':<10} {'':<40} killed {killed:>4}  survived {tested - killed:>3}  "
          f"kill rate {100 * killed / max(tested, 1):.1f}%")
    for key, r in results.items():
        for s in r["survivors"]:
            print(f"\n{key} {r['module']}:{s['line']} {s['operator']}\n{s['diff']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
