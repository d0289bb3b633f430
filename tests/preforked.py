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

#: `python -c CLI args...` is `shopsearch args...`
CLI = "from indexer.cli import main; main()"

_ctx: mp.context.BaseContext | None = None


def _context() -> mp.context.BaseContext:
    global _ctx
    if _ctx is None:
        _ctx = mp.get_context("forkserver")
        _ctx.set_forkserver_preload(PRELOAD)  # ignored if the session's fork server already runs
    return _ctx


def _child(script: str, args: list[str], env: dict[str, str], cwd: str, out: str, err: str,
           new_session: bool = False) -> None:
    """In the forked process: the environment, working directory and argv the script would
    have had as `python -c script args...`, its stdout/stderr into files."""
    if new_session:  # Popen(start_new_session=True): the test signals the whole group
        os.setsid()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # line-buffered, as python's own stderr
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


class Started:
    """A preforked script still running, used like subprocess.Popen: pid, poll, wait,
    send_signal, then communicate for its exit status and output (read from files)."""

    def __init__(self, script: str, args: list[str], env: dict[str, str] | None, cwd: str | Path | None,
                 new_session: bool) -> None:
        self.args = ["<preforked>", *args]
        self._tmp = tempfile.TemporaryDirectory(prefix="preforked-")
        self._out, self._err = os.path.join(self._tmp.name, "out"), os.path.join(self._tmp.name, "err")
        for path in (self._out, self._err):  # there before the child runs: stderr_so_far reads it at once
            Path(path).touch()
        self._proc = _context().Process(target=_child, args=(
            script, list(args), dict(env if env is not None else os.environ), str(cwd or os.getcwd()), self._out,
            self._err, new_session))
        self._proc.start()
        self.pid: int = self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, -N for a death by signal N; None while it runs."""
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def send_signal(self, sig: int) -> None:
        if self._proc.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self._proc.kill()

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._proc.exitcode

    def stderr_so_far(self) -> str:
        """What it wrote to stderr up to now (it is not buffered: a file, as a pipe would be read)."""
        return Path(self._err).read_text(errors="replace")

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Waits for the end, then (stdout, stderr) as text; the files are removed."""
        self.wait(timeout)
        out, err = Path(self._out).read_text(errors="replace"), Path(self._err).read_text(errors="replace")
        self._tmp.cleanup()
        return out, err


def start_script(script: str, *args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 start_new_session: bool = False) -> Started:
    """`subprocess.Popen([sys.executable, "-c", script, *args], stdout=PIPE, stderr=PIPE, text=True)`,
    in a process forked from the preloaded fork server."""
    return Started(script, list(args), env, cwd, start_new_session)


def run_script(script: str, *args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """`subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)`,
    in a process forked from the preloaded fork server. returncode is -N for a death by signal N."""
    proc = start_script(script, *args, env=env, cwd=cwd)
    try:
        out, err = proc.communicate(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
