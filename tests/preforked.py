"""Run a Python script in a real, separate process without paying for a fresh interpreter:
the process is forked from multiprocessing's fork server, which imported torch and the
indexing modules once for the whole session. A test that needs a process which really
dies (SIGSEGV, SIGKILL) gets one, with its exit status, stdout and stderr, as from
`subprocess.run([sys.executable, "-c", script, *args])`, seconds cheaper per run."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: imported once, in the fork server, before any child is forked (no threads started yet)
PRELOAD = ["torch", "numpy", "PIL.Image", "shopsearch.config", "shopsearch.embedding.pipeline",
           "shopsearch.embedding.gpu", "shopsearch.embedding.items", "shopsearch.embedding.cache",
           "indexer.build", "indexer.cli", "tests.conftest", "tests.test_indexer_pipeline", "tests.preforked"]

_ctx: mp.context.BaseContext | None = None


def _context() -> mp.context.BaseContext:
    global _ctx
    if _ctx is None:
        _ctx = mp.get_context("forkserver")
        _ctx.set_forkserver_preload(PRELOAD)  # ignored if the session's fork server already runs
    return _ctx


def _child(script: str, args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """In the forked process: the environment, working directory and argv the script would
    have had as `python -c script args...`, its stdout/stderr into files."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    sys.argv = ["-c", *args]
    try:
        exec(compile(script, "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as e:  # the CLI's sys.exit(code): the process's exit status, as in a real run
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(e.code if isinstance(e.code, int) else 0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception of `python -c`
        import traceback

        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_script(script: str, *args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """`subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)`,
    in a process forked from the preloaded fork server. returncode is -N for a death by signal N."""
    with tempfile.TemporaryDirectory(prefix="preforked-") as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        proc = _context().Process(target=_child, args=(script, list(args), dict(env if env is not None else os.environ),
                                                      str(cwd or os.getcwd()), out, err))
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["<preforked>", *args], timeout)
        return subprocess.CompletedProcess(["<preforked>", *args], proc.exitcode, Path(out).read_text(errors="replace"),
                                           Path(err).read_text(errors="replace"))
