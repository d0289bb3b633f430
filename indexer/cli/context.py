"""What every `shopsearch` command module shares: the group class that turns domain errors
into exit codes, the commands' view of the composition root (`Ctx`), JSON output and the
SIGTERM handling of resumable jobs. Its own module, so that the command modules import it
and the group (indexer/cli/__init__.py) imports them, never the other way round."""
from __future__ import annotations

import json
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import click

from shopsearch.config import Settings
from shopsearch.errors import ShopSearchError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a stop runs the same clean-up as Ctrl-C."""


class Stopped(KeyboardInterrupt):
    """A resumable job (under sigterm_as_interrupt) stopped by Ctrl-C or SIGTERM."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a long job runs, SIGTERM (systemd, Kubernetes, `kill`) stops it like Ctrl-C:
    the vectors embedded so far are saved, worker pools shut down, and the crash journal is
    removed (a killed run's journal makes the next run re-check its in-flight images)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main_pid = os.getpid()

    def on_term(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:  # a forked worker inherited this: die as it would have
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except KeyboardInterrupt as e:
        raise Stopped("SIGTERM" if isinstance(e, Terminated) else "interrupt") from e
    finally:
        signal.signal(signal.SIGTERM, previous)


class ShopSearchGroup(click.Group):
    """A click group that turns ShopSearchError into a one-line error and exit code 1, a
    resumable job's stop (Ctrl-C or SIGTERM under sigterm_as_interrupt) into a line saying
    how to go on, and any other Ctrl-C into exit code 130 (click's own says 1: an error)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShopSearchError as e:
            exc = click.ClickException(f"{e} [{e.code}]")
            exc.exit_code = e.exit_code  # 1, or one a script can act on (75: busy, try later)
            raise exc from e
        except Stopped as e:
            click.echo(f"stopped ({e.how}); the work done so far is kept: run the same command again to go on",
                       err=True)
            ctx.exit(143 if e.how == "SIGTERM" else 130)
        except KeyboardInterrupt:  # Ctrl-C before a job's run (loading the model, rescanning): no error, 130
            click.echo("Aborted!", err=True)
            ctx.exit(130)


@dataclass
class Ctx:
    """The commands' view of the composition root (shopsearch.app): services built from the
    one Settings of this run. Imports are lazy so that `shopsearch --help` stays quick."""

    settings: Settings
    _catalogue: Any = field(default=None, repr=False)

    def catalogue(self, create: bool = True):
        """The catalogue store, opened once; `create`=False (commands that only read) refuses a
        SQLite catalogue that does not exist rather than making an empty one at a mistyped path."""
        if self._catalogue is None:
            from shopsearch.app import open_catalogue

            self._catalogue = open_catalogue(self.settings, create=create)
        return self._catalogue

    def index_store(self):
        from shopsearch.app import open_index_store

        return open_index_store(self.settings)

    def model(self, spec: str | None = None):
        """The embedder `spec` names (default: the configured model)."""
        from shopsearch.app import load_model

        return load_model(self.settings, spec)

    def model_for_index(self, spec: str | None = None):
        """`spec`, else the serving index's model, else the configured one."""
        from shopsearch.app import embedder_for_index

        return embedder_for_index(self.settings, self.index_store(), spec)

    def search_service(self, model: str | None = None):
        from shopsearch.app import open_search_service

        return open_search_service(self.settings, catalogue=self.catalogue(), model=model)

    def index_builder(self, embedder, store=None):
        from indexer.build import IndexBuilder

        store = store or self.index_store()
        return IndexBuilder(embedder, self.catalogue(), store, self.settings.vector_cache_dir,
                            gpu=self.settings.gpu, calibrator=self.build_calibrator(embedder, store))

    def build_calibrator(self, embedder, store):
        from shopsearch.app import build_calibrator

        return build_calibrator(self.settings, store, embedder, self.catalogue())

    def close(self) -> None:
        if self._catalogue is not None:
            self._catalogue.close()


pass_ctx = click.make_pass_decorator(Ctx)


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))
