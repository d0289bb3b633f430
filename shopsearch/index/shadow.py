"""Shadow builds: an index build made beside the serving one and served only once promoted
(`IndexStore.promote`). Builders publish through the store they are given; this view of a
store turns their publish into staging the shadow, so every builder (local, Ray, adapter)
can build a shadow without knowing about it."""
from __future__ import annotations

from typing import Any

from shopsearch.index.store import IndexStore
from shopsearch.index.manifest import IndexManifest


class ShadowTarget:
    """An IndexStore whose publish() stages the SHADOW build; everything else is the store's."""

    def __init__(self, store: IndexStore) -> None:
        self.store = store

    def publish(self, *args: Any, **kwargs: Any) -> IndexManifest:
        kwargs["make_current"] = False
        return self.store.publish(*args, **kwargs)

    def publish_delta(self, *args: Any, **kwargs: Any) -> IndexManifest:
        kwargs["make_current"] = False
        return self.store.publish_delta(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "store":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.store, name)
