"""The runtime never imports torch or stlpips_export: proven in a subprocess where importing them fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from example_pairs import float64_distances
from PIL import Image

from stlpips_rt.precision import tolerance

BLOCKER = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'stlpips_export', 'onnx'):
            raise ImportError(name + ' is blocked: the runtime must not import it')
        return None
sys.meta_path.insert(0, BlockTorch())
"""

SCORE = BLOCKER + """
from stlpips_rt import Scorer
scorer = Scorer(sys.argv[1], providers='cpu')
print(repr(scorer.score(sys.argv[2], sys.argv[3])))
leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'stlpips_export', 'onnx'))
assert not leaked, leaked
"""

CLI = BLOCKER + """
from stlpips_rt.cli.score import main
main(sys.argv[1:])
"""


def run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_blocker_really_blocks_torch() -> None:
    result = run(BLOCKER + "import torch\n")
    assert result.returncode != 0 and "blocked" in result.stderr


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(base).save(folder / "ref.png")
    Image.fromarray(np.roll(base, 1, axis=1)).save(folder / "shifted.png")
    return folder


def _in_process(model: Path, images_dir: Path) -> float:
    from stlpips_rt import Scorer

    return Scorer(model, providers="cpu").score(images_dir / "ref.png", images_dir / "shifted.png")


def test_scorer_scores_real_files_without_torch(exported_model, images_dir: Path) -> None:
    model = exported_model("alex", "st")
    result = run(SCORE, str(model), str(images_dir / "ref.png"), str(images_dir / "shifted.png"))
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip()) == _in_process(model, images_dir)


def test_scorer_reproduces_reference_numbers_without_torch(exported_model, shared_data: Path) -> None:
    """The authors' pairs against float64 references (tests/example_pairs.py), within float32's tolerance."""
    model = str(exported_model("alex", "st"))
    expected = float64_distances(shared_data, "alex", "st")
    for other, value in zip(("ex_p0.png", "ex_p1.png"), expected, strict=True):
        result = run(SCORE, model, str(shared_data / "ex_ref.png"), str(shared_data / other))
        assert result.returncode == 0, result.stderr
        assert abs(float(result.stdout.strip()) - value) <= tolerance("fp32").max_abs


def test_score_cli_runs_without_torch(exported_model, images_dir: Path) -> None:
    model = exported_model("alex", "st")
    result = run(CLI, "--model", str(model), "--providers", "cpu", str(images_dir / "ref.png"),
                 str(images_dir / "shifted.png"))
    assert result.returncode == 0, result.stderr
    # Same engine, same file: the printed digits give back the very float32 the graph computed.
    assert np.float32(result.stdout.strip()) == np.float32(_in_process(model, images_dir))


@pytest.mark.parametrize("tool", ["stlpips-export", "stlpips-parity", "stlpips-eval", "stlpips-bench",
                                  "stlpips-bench-gpu"])
def test_torch_tools_name_the_missing_extra_in_a_runtime_only_install(tool: str) -> None:
    """Where torch is absent, the export package's commands print one line naming the extra and exit 2."""
    code = BLOCKER.replace("'stlpips_export', ", "") + f"""
from stlpips_export.entry import TOOLS, _launcher
sys.argv = [{tool!r}]
_launcher({tool!r})()
"""
    result = run(code)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: needs torch"), result.stderr
    assert "pip install 'stlpips-deploy[" in lines[0]
