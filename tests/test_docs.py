"""The documentation is tested: every ```bash and ```python block of README.md and docs/*.md runs, page by page, in
a fresh folder after the set-up command, and must succeed; when a doc and the code disagree, this goes red.

The fresh folder is what ``bash scripts/demo.sh`` leaves in ``out/example`` (``scripts/make_example.py``: the sample
images the examples name) with ``models/`` holding the exported alex-st (and its features graph); other models are
made by the docs' own commands. It also links the checkout's ``scripts/``, ``runtime/``, ``export/`` and
``examples/`` (and copies ``docs/*.json``), so that commands a doc runs from the repository's root run as written.
Blocks of one page run in order in one folder, each in its own process (bash with ``set -eo pipefail``; Python as a
script), with the project's console scripts on PATH.

A block that cannot run here carries ``<!-- not run here: REASON -->`` on the line right above its fence (a GPU,
another host, a long measurement); its ``stlpips-*`` command lines are still parsed by the command's own option
parser, so a renamed or removed option fails here too, and its Python must compile. Blocks of output, configuration
or samples use other tags (``text``, ``console``, ``json``, ...); an untagged fence is refused.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = ("bash", "python")
NOT_RUN = re.compile(r"^<!-- not run here: (?P<reason>.*\S.*) -->$")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>.*)$")
BLOCK_TIMEOUT_S = 300


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    not_run: str | None  # the reason, when marked

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """Every fenced block of a Markdown page, with its info string's first word and the not-run marker above it."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m["fence"], m["indent"]
        end = i + 1
        while end < len(lines) and not re.match(rf"^ *{re.escape(fence[0]) * len(fence)}{fence[0]}*\s*$",
                                                lines[end]):
            end += 1
        code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end])
        above = NOT_RUN.match(lines[i - 1].strip()) if i > 0 else None
        lang = (m["info"].split() or [""])[0]
        found.append(Block(page, i + 1, lang, code + "\n", above["reason"] if above else None))
        i = end + 1
    return found


def _markers_not_above_a_fence(page: Path) -> list[str]:
    lines = page.read_text().splitlines()
    return [f"{page.relative_to(ROOT)}:{n + 1}" for n, line in enumerate(lines)
            if "<!-- not run here" in line and (n + 1 >= len(lines) or not FENCE.match(lines[n + 1])
                                                 or not NOT_RUN.match(line.strip()))]


def test_every_fence_is_tagged_and_every_marker_sits_on_a_fence() -> None:
    untagged = [b.where for page in PAGES for b in blocks_of(page) if not b.lang]
    assert not untagged, f"untagged fences (use bash/python to run, text/console/json/... otherwise): {untagged}"
    misplaced = [where for page in PAGES for where in _markers_not_above_a_fence(page)]
    assert not misplaced, f"'<!-- not run here: REASON -->' must be the line right above a fence: {misplaced}"


# --- checking the commands of blocks that are not run ----------------------------------------------------------
def _console_scripts() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name.startswith("stlpips-")}


def _click_command(name: str) -> click.Command:
    from stlpips_export.entry import TOOLS

    module = TOOLS[name][0] if name in TOOLS else _console_scripts()[name].split(":")[0]
    attr = "main" if name in TOOLS else _console_scripts()[name].split(":")[1]
    import importlib

    return getattr(importlib.import_module(module), attr)


def command_lines(code: str) -> list[list[str]]:
    """The ``stlpips-*`` invocations of a bash block, as argument lists (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        for start, word in enumerate(words):
            if word.startswith("stlpips-") and word in _console_scripts():
                args = words[start:]
                for stop, arg in enumerate(args):
                    if arg in ("&&", "||", ";", "|", "&"):
                        args = args[:stop]
                        break
                out.append(args)
                break
    return out


def parse_only(args: list[str]) -> None:
    """Parse one invocation with its command's own click parser, running nothing: unknown options, missing option
    values, extra arguments and bad choices raise (:class:`click.UsageError`); values that name files are not
    checked (the files are not here)."""
    command, name = _click_command(args[0]), args[0]
    rest = [a for a in args[1:] if not re.fullmatch(r"\[.*\]", a)]  # optional parts written [--like this]
    if isinstance(command, click.Group):  # `stlpips-eval shift ...`: the subcommand's own options
        sub = command.commands.get(rest[0]) if rest else None
        if sub is None:
            raise click.UsageError(f"{name} has no subcommand {rest[0] if rest else '(none given)'!r}")
        command, name, rest = sub, f"{name} {rest[0]}", rest[1:]
    ctx = click.Context(command, info_name=name)
    values, extra, _ = command.make_parser(ctx).parse_args(args=list(rest))  # unknown options raise here
    if extra and not ctx.allow_extra_args:
        raise click.UsageError(f"unexpected extra argument(s) {extra}", ctx)
    for param in command.params:  # choices are checked; files and folders are not (they are not here)
        if isinstance(param.type, click.Choice) and values.get(param.name) is not None:
            given = values[param.name]
            for value in given if isinstance(given, list | tuple) else [given]:
                if "$" not in str(value):  # a shell variable's value is not known here
                    param.type.convert(value, param, ctx)


NOT_RUN_BLOCKS = [b for page in PAGES for b in blocks_of(page) if b.lang == "bash" and b.not_run]


@pytest.mark.parametrize("block", NOT_RUN_BLOCKS, ids=[b.where for b in NOT_RUN_BLOCKS])
def test_commands_of_blocks_not_run_here_still_parse(block: Block) -> None:
    for args in command_lines(block.code):
        try:
            parse_only(args)
        except click.UsageError as exc:
            pytest.fail(f"{block.where}: `{shlex.join(args)}`: {exc.format_message()}")


NOT_RUN_PYTHON = [b for page in PAGES for b in blocks_of(page) if b.lang == "python" and b.not_run]


@pytest.mark.parametrize("block", NOT_RUN_PYTHON, ids=[b.where for b in NOT_RUN_PYTHON])
def test_python_blocks_not_run_here_still_compile(block: Block) -> None:
    compile(block.code, block.where, "exec")


# --- running the pages ---------------------------------------------------------------------------------------------
RUN_PAGES = [p for p in PAGES if any(b.lang in RUN and not b.not_run for b in blocks_of(p))]


@pytest.fixture(scope="module")
def fresh_models(exported_model) -> Path:
    """The set-up's models: alex-st and its features graph, as ``bash scripts/demo.sh`` exports them."""
    return exported_model("alex", "st", features=True).parent


def _fresh_folder(base: Path, models: Path) -> Path:
    folder = base / "work"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_example.py"), str(folder)], check=True)
    for name in ("scripts", "runtime", "export", "examples", "requirements", "pyproject.toml"):
        (folder / name).symlink_to(ROOT / name)  # repository commands (scripts/...) run as from a checkout
    (folder / "docs").mkdir()  # the docs' data, copied: a doc command writing into docs/ stays in this folder
    for data in (ROOT / "docs").glob("*.json"):
        shutil.copy2(data, folder / "docs" / data.name)
    (folder / "models").mkdir()
    for name in ("stlpips_alex_st.onnx", "stlpips_alex_st_features.onnx"):
        shutil.copy2(models / name, folder / "models" / name)  # copies: a doc's export must not touch the suite's
    return folder


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    if block.lang == "bash":
        argv = ["bash", "-c", "set -eo pipefail\n" + block.code]
    else:
        script = cwd / f".block_{block.line}.py"
        script.write_text(block.code)
        argv = [sys.executable, str(script)]
    # Its own process group: a block that runs past its time is ended with everything it started.
    with subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += f"\n(ended after {BLOCK_TIMEOUT_S} s)"
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.parametrize("page", RUN_PAGES, ids=[str(p.relative_to(ROOT)) for p in RUN_PAGES])
def test_every_block_of_the_page_runs_as_written(page: Path, fresh_models: Path, tmp_path: Path) -> None:
    cwd = _fresh_folder(tmp_path, fresh_models)
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("STLPIPS_MODEL_DIR", "PYTHONPATH")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", STLPIPS_CACHE_DIR=str(tmp_path / "cache"),
               STLPIPS_REPO=str(ROOT), MPLBACKEND="Agg")
    for block in blocks_of(page):
        if block.lang not in RUN or block.not_run:
            continue
        done = run_block(block, cwd, env)
        if done.returncode != 0:
            pytest.fail(f"{block.where} ({block.lang}) exited {done.returncode} in {cwd}:\n{block.code}\n"
                        f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}")
