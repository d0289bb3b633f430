"""What `shopsearch index build` alone needs around the builder: its options checked before
any model loads, the shopper-photo sample of a centred build, and the hold on Ctrl-C and
SIGTERM once its build is published (the command then finishes its last steps and says so,
rather than calling a complete build "stopped")."""
from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any, Callable

import click

from indexer.cli.context import Ctx, Terminated
from shopsearch.errors import ConfigError

#: the --index names ShopSearch knows itself (anything else must be a FAISS factory string)
INDEX_NAMES = ("keep", "auto", "flat", "hnsw", "ivfpq", "ivfflat")


def check_index_option(index_type: str) -> None:
    """ConfigError (exit 2) for an --index that no dimension could make: a name FAISS cannot
    parse. Checked before the model loads; what depends on the model's dimension (PQ
    sub-quantizers dividing it) is still checked when the index is made."""
    if index_type in INDEX_NAMES:
        return
    import faiss

    from shopsearch.index.sizing import faiss_reason

    try:
        faiss.index_factory(64 * 3 * 5 * 7, index_type, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = faiss_reason(e)
        if "could not parse" in reason:
            raise ConfigError(f"--index {index_type!r} is not an index type ShopSearch or FAISS knows: expected "
                              f"{', '.join(INDEX_NAMES)} or a FAISS factory string such as 'IVF256,Flat' "
                              f"({reason})") from None


def centre_sample(c: Ctx, embedder, builder, sample: str | None, workers: int | None, progress: bool):
    """(vectors, source) of unlabelled shopper photos for a centred build."""
    if not sample:
        raise click.UsageError("--centre on needs --centre-sample DIR (unlabelled shopper photos) or "
                               "--centre-sample feedback (the searches logged so far)")
    if sample == "feedback":
        from shopsearch.feedback import FeedbackStore

        vecs = FeedbackStore(c.catalogue().engine).query_vectors(embedder.fingerprint)
        return vecs, f"{len(vecs)} searches in the feedback log"
    from indexer.centring_build import folder_sample

    return folder_sample(embedder, builder.cache, sample, workers, progress)


class PublishWatch:
    """The index store as the build sees it, watching its publish. From the moment a build is
    published (CURRENT names it, or SHADOW for a shadow build) Ctrl-C and SIGTERM no longer stop
    the command: they are noted, the command records the build, prints its report, says that the
    signal came after publication and exits 0, since what was asked for is done. A signal that
    lands inside publish after the pointer was written (old builds being pruned) counts as after.
    Use it as a context manager around the build and its report; everything else is the store's."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.published: str | None = None  # the build id, once published
        self.signal: str | None = None  # "interrupt" | "SIGTERM", once one arrived after publication
        self._saved: dict[int, Any] = {}
        self._pid = os.getpid()

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        return self._watched(self.store.publish, args, kwargs)

    def publish_delta(self, *args: Any, **kwargs: Any) -> Any:
        return self._watched(self.store.publish_delta, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "store":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.store, name)

    def _watched(self, publish: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        manifest = kwargs.get("manifest", args[1] if len(args) > 1 else None)
        try:
            saved = publish(*args, **kwargs)
        except KeyboardInterrupt as e:
            build_id = getattr(manifest, "build_id", None)
            if build_id is None or build_id not in (self.store.current_id(), self.store.shadow_id()):
                raise  # not published: the build stops, resumable (exit 130/143)
            self.signal = "SIGTERM" if isinstance(e, Terminated) else "interrupt"
            saved = self._on_disk(build_id) or manifest
        self.published = saved.build_id
        self.hold()
        return saved

    def _on_disk(self, build_id: str) -> Any:
        from shopsearch.index.manifest import MANIFEST, IndexManifest

        try:
            return IndexManifest(**json.loads((self.store.build_dir(build_id) / MANIFEST).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def hold(self) -> None:
        """Note SIGINT and SIGTERM instead of acting on them (again: sigterm_as_interrupt puts its
        predecessor back as it ends). Only in the main thread, and only once published."""
        if self.published is None or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(sig)
            if current != self._note:
                self._saved[sig] = current
                signal.signal(sig, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked worker inherited this: die as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal = "SIGTERM" if signum == signal.SIGTERM else "interrupt"

    def __enter__(self) -> PublishWatch:
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._saved.clear()
        if self.signal is not None and self.published is not None:
            what = "Ctrl-C" if self.signal == "interrupt" else "SIGTERM"
            staged = self.published == self.store.shadow_id()
            click.echo(f"{what} arrived after build {self.published} was "
                       f"{'staged as the shadow build' if staged else 'published'}: it is complete "
                       f"{'(not serving)' if staged else 'and serving'}; the command finished its last steps "
                       "first (exit 0)", err=True)
