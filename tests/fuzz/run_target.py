"""Run one fuzz target under libFuzzer.

    python -m tests.fuzz.run_target NAME [libFuzzer flags] [CORPUS_DIR ...]

NAME is a key of `targets.TARGETS`. The target's seeds are written into the first corpus
directory (new inputs go there too); without one they go into a scratch directory that is
removed at the end, with everything else the run made there (the config target's files, the
target's dictionary from `seeds.dictionary`, used unless `-dict=` is given).
Crashes are written where `-artifact_prefix=` says (libFuzzer's default: the current
directory). The exit status is libFuzzer's: 0 when no input broke an invariant.

The fuzzing runs in a forked child so that the parent can remove the scratch directory:
libFuzzer ends the process from C, past any Python clean-up.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from types import FrameType, ModuleType
from typing import NoReturn

from tests.fuzz import engine

# Packages whose code the coverage feedback follows besides sendgate, per target.
EXTRA_INSTRUMENTED: dict[str, tuple[str, ...]] = {"header": ("email",)}
# Set (to anything) to follow sendgate's code only: the instrumented stdlib parser runs the
# header target at ~650 inputs/s, too slow for long runs once its paths are covered.
SENDGATE_ONLY = "SENDGATE_FUZZ_SENDGATE_ONLY"
USAGE = "usage: python -m tests.fuzz.run_target NAME [libFuzzer flags] [CORPUS_DIR ...]"


def load_targets(name: str) -> ModuleType:
    """tests.fuzz.targets with sendgate instrumented and the regex/str hooks on.

    The hooks wrap patterns compiled after they are enabled, and the wrappers take no `pos`
    argument (tomllib passes one). So everything is imported once plainly, then sendgate (and
    this target's extra packages) is imported again, instrumented, with the hooks on: its
    patterns are wrapped, those of the other libraries stay as they were.
    """
    importlib.import_module("tests.fuzz.targets")
    extra = () if os.environ.get(SENDGATE_ONLY) else EXTRA_INSTRUMENTED.get(name, ())
    instrumented = ("sendgate", *extra)
    fresh = (*instrumented, "tests.fuzz.targets", "tests.fuzz.seeds", "tests.support")
    for module in list(sys.modules):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in fresh):
            del sys.modules[module]
    engine.enable_hooks()
    with engine.instrument(instrumented):
        return importlib.import_module("tests.fuzz.targets")


def _fuzz(name: str, args: list[str], scratch: Path) -> NoReturn:
    try:
        targets = load_targets(name)
        from tests.fuzz import seeds

        corpora = [arg for arg in args if not arg.startswith("-")]
        if not corpora:
            corpora = [str(scratch / "corpus")]
            args = [*args, corpora[0]]
        seeds.write(name, Path(corpora[0]))
        if not any(arg.startswith("-dict=") for arg in args):
            words = scratch / "dictionary"
            words.write_text(seeds.dictionary(name))
            args = [f"-dict={words}", *args]
        targets.use_scratch(scratch / "work")
    except BaseException:
        traceback.print_exc()
        os._exit(2)
    # Not guarded: on a crash atheris raises SystemExit, and the interpreter's normal exit is
    # what lets libFuzzer write the crash input.
    engine.fuzz([sys.argv[0], *args], targets.TARGETS[name])
    os._exit(0)


def main(argv: list[str]) -> int:
    from tests.fuzz.targets import TARGETS

    if len(argv) < 2 or argv[1] not in TARGETS:
        print(f"{USAGE}\ntargets: {' '.join(TARGETS)}", file=sys.stderr)
        return 2
    name, args = argv[1], argv[2:]
    scratch = Path(tempfile.mkdtemp(prefix=f"sendgate-fuzz-{name}-"))
    try:
        pid = os.fork()
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if pid == 0:
        # Outside the try below: the child must not remove the scratch directory. It imports
        # afresh what the check above loaded plainly.
        _fuzz(name, args, scratch)

    def forward(signum: int, frame: FrameType | None) -> None:
        os.kill(pid, signum)

    try:
        # libFuzzer in the child reports an interrupt itself; the parent waits and cleans up.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, forward)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
