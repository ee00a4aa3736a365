"""Named breakages of the guards, each of which a test of the default suite must catch.

Each entry below breaks one feature on purpose (a text replacement in one file) in a scratch copy of the working
tree, runs the tests named for it there, and expects them to fail. The list is the one docs/testing.md records:
breakages that once went unnoticed, and faults the suite claims to cover (a lost Ray node, a refused resume).

    .venv/bin/python scripts/named_mutations.py            # all of them (tens of minutes: some export a model)
    .venv/bin/python scripts/named_mutations.py --list     # what each one does
    .venv/bin/python scripts/named_mutations.py ray-resume # some of them

Exit status 0 when every breakage made its tests fail; 1 (and the names) when one went unnoticed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mutation_test import scratch_copy


@dataclass(frozen=True)
class Breakage:
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


BREAKAGES = {
    "cache-key-file-name": Breakage(
        "the feature cache's key reduced to the file name", "runtime/stlpips_rt/matrix/cache.py",
        "content = content_sha256(path)", "content = Path(path).name",
        ("tests/test_feature_cache.py",)),
    "cache-ignores-model": Breakage(
        "the feature cache ignoring the model", "runtime/stlpips_rt/matrix/cache.py",
        'text = f"stlpips-features/1|model={model_sha256}|content=', 'text = f"stlpips-features/1|content=',
        ("tests/test_feature_cache.py",)),
    "mean-error-zero": Breakage(
        "spatial_mean_error returns 0.0", "export/stlpips_export/verify.py",
        '    photo-like ``h x w`` pair (the graph\'s float32 mean is all that differs)."""\n',
        '    photo-like ``h x w`` pair (the graph\'s float32 mean is all that differs)."""\n    return 0.0\n',
        ("tests/test_spatial_mean.py",)),
    "floor-imports-export": Breakage(
        "`import stlpips_export` added to the ground-floor stlpips_rt.precision", "runtime/stlpips_rt/precision.py",
        # inside a function: importing the module still works, only the layout rules can see it
        "import numpy as np\n", "import numpy as np\n\n\ndef _export_stage():\n    import stlpips_export\n"
                                 "\n    return stlpips_export\n",
        ("tests/test_layout.py::test_ground_floor_imports_nothing_above_it",
         "tests/test_layout.py::test_the_runtime_never_imports_the_export_stage")),
    "refusal-without-fields": Breakage(
        "field names removed from the --resume refusal message", "runtime/stlpips_rt/io/manifest.py",
        'what = "; ".join(f"{f}: {a!r} in the file, {b!r} now" for f, a, b in differ)',
        'what = "; ".join(f"{a!r} in the file, {b!r} now" for f, a, b in differ)',
        ("tests/test_manifest.py", "tests/test_outputs.py::test_check_resume_names_each_field_that_differs")),
    "ray-resume-unchecked": Breakage(
        "the Ray resume check removed", "runtime/stlpips_rt/scale/job.py",
        "        manifest.check_resume(output, provenance)\n", "        pass\n",
        ("tests/test_ray_batch.py::test_resume_on_ray_refuses_another_set_up_before_starting",)),
    "node-loss-no-retry": Breakage(
        "the node-loss retry disabled (a lost block is not submitted again)", "runtime/stlpips_rt/scale/matrix.py",
        "            result.block_retries += 1\n            running[submit(t)] = t\n",
        "            result.block_retries += 1\n",
        ("tests/test_matrix.py::test_ray_matrix_survives_losing_a_worker_node",)),
    "schema-empty-dist": Breakage(
        "the OpenAPI schema allowing an empty dist list (what schemathesis found)",
        "runtime/stlpips_rt/scale/service.py",
        "File(min_length=1,  # the schema says so too\n", "File(\n",
        ("tests/test_ray_serve.py::test_every_answer_fits_the_schema_and_none_is_a_5xx",)),
    "oip-datatype-crash": Breakage(
        "a /v2 datatype that is no string reaching a dict lookup (a 500; what schemathesis found)",
        "runtime/stlpips_rt/scale/oip.py",
        "if not isinstance(datatype, str) or (datatype != BYTES and datatype not in FIXED_DATATYPES):",
        "if datatype != BYTES and datatype not in FIXED_DATATYPES:",
        ("tests/test_serve_v2.py", "tests/test_ray_serve.py::test_every_answer_fits_the_schema_and_none_is_a_5xx")),
    "oip-null-refused": Breakage(
        "a /v2 request's null parameters refused (the schema allows null; what schemathesis found)",
        "runtime/stlpips_rt/scale/oip.py",
        "    if parameters is None:  # absent or null: none\n        return {}\n", "",
        ("tests/test_serve_v2.py::test_null_optional_fields_count_as_absent",)),
}


def run(key: str, breakage: Breakage, scratch: Path) -> tuple[bool, str, float]:
    """Break, run the tests, mend. (caught, the tests' last lines, seconds)."""
    path = scratch / breakage.path
    original = path.read_text()
    if original.count(breakage.old) != 1:
        raise SystemExit(f"{key}: {breakage.path} no longer holds the text to break once; update {__file__}")
    path.write_text(original.replace(breakage.old, breakage.new))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(scratch / "runtime"), str(scratch / "export")]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                               *breakage.tests], cwd=scratch, env=env, capture_output=True, text=True)
    finally:
        path.write_text(original)
    tail = "\n".join(line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR", "E   ")) or
                     " passed" in line or " failed" in line)
    return done.returncode not in (0, 5), tail, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"default: all of {', '.join(BREAKAGES)}")
    parser.add_argument("--list", action="store_true", help="say what each breakage does, run nothing")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - BREAKAGES.keys())
    if unknown:
        parser.error(f"no breakage {', '.join(unknown)}; choose from {', '.join(BREAKAGES)}")
    chosen = args.names or list(BREAKAGES)
    if args.list:
        for key in chosen:
            b = BREAKAGES[key]
            print(f"{key}: {b.what} ({b.path}); caught by {' '.join(b.tests)}")
        return 0
    missed = []
    with tempfile.TemporaryDirectory(prefix="stlpips-breakages-") as tmp:
        scratch = Path(tmp)
        scratch_copy(scratch)
        for key in chosen:
            caught, tail, seconds = run(key, BREAKAGES[key], scratch)
            print(f"{'caught' if caught else 'MISSED'}  {key}: {BREAKAGES[key].what} ({seconds:.0f} s)\n"
                  + "".join(f"    {line}\n" for line in tail.splitlines()[-6:]), flush=True)
            if not caught:
                missed.append(key)
    if missed:
        print(f"unnoticed: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
