"""A short libFuzzer run of every fuzz target, and checks that seeds and targets agree.

Each run is a subprocess (`python -m tests.fuzz.run_target`) with a fixed seed and a fixed
number of inputs, in its own tmp_path: corpus, crash artifacts and scratch files stay there.
Long runs are bench/fuzz.py's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.fuzz import seeds
from tests.fuzz.engine import Provider
from tests.fuzz.targets import TARGETS, use_scratch

ROOT = Path(__file__).resolve().parents[2]
# Inputs per target: 1-3 s of fuzzing each on one core, all nine well under a minute on two.
RUNS = {
    "commands": 100_000,
    "address": 20_000,
    "header": 4_000,
    "sasl": 100_000,
    "data": 30_000,
    "session": 8_000,
    "reply": 30_000,
    "mtasts": 50_000,
    "config": 5_000,
}
_EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")


def fuzz_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a fuzzing subprocess: the checkout importable, temp files in tmp_path.

    Coverage is not measured in it: tracing would slow the run several times over, and the
    targets' code is measured by the unit tests.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["TMPDIR"] = str(tmp_path)
    return env


def test_every_target_has_seeds_and_a_short_run() -> None:
    assert set(TARGETS) == set(seeds.SEEDS) == set(RUNS)


@pytest.mark.parametrize("pieces", [[b"a"], [b"ab", b"c" * 300, b"d"], [b"x" * 64, b"y"]])
def test_chunked_seeds_read_back_as_written(pieces: list[bytes]) -> None:
    provider = Provider(seeds.chunked(pieces, 64, 7, 200))
    assert (provider.option(256), provider.option(256)) == (7, 200)
    reads = list(provider.chunks(64))
    assert b"".join(reads) == b"".join(pieces)
    assert all(1 <= len(read) <= 64 for read in reads)
    assert provider.remaining() == 0


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_pass_their_target(name: str, tmp_path: Path) -> None:
    use_scratch(tmp_path)
    found = seeds.SEEDS[name]()
    assert len(found) >= 5
    for seed in found:
        TARGETS[name](seed)


REGRESSIONS = ROOT / "tests" / "fuzz" / "regressions"


@pytest.mark.parametrize(
    "found", sorted(REGRESSIONS.iterdir()), ids=lambda path: path.name.split("-")[0]
)
def test_inputs_fuzzing_broke_pass_their_target_now(found: Path, tmp_path: Path) -> None:
    """Each file in regressions/ is an input a long run found (named `<target>-<hash>`)."""
    use_scratch(tmp_path)
    TARGETS[found.name.split("-")[0]](found.read_bytes())


@pytest.mark.fuzz
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_fuzz_run_finds_nothing(name: str, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    corpus = tmp_path / "corpus"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.run_target",
            name,
            f"-runs={RUNS[name]}",
            "-seed=20261205",
            "-timeout=20",
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/",
            str(corpus),
        ],
        cwd=tmp_path,
        env=fuzz_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    tail = result.stderr[-4000:]
    assert result.returncode == 0, tail
    assert list(artifacts.iterdir()) == [], tail
    executed = _EXECUTED.search(result.stderr)
    assert executed is not None, tail
    assert int(executed[1]) >= RUNS[name], tail
    # Seeds went into the corpus directory, which libFuzzer read and added to.
    assert len(list(corpus.iterdir())) >= 5
    # The scratch directory (TMPDIR) was removed: only what this test made is left.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["artifacts", "corpus"]
