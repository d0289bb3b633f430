"""The guard against publishing a build that silently drops much of the serving index.

A catalogue share that is not mounted, a manifest pointing at the wrong folder, or
`--database-url` naming an empty database all look like "every image is gone" to a build:
published as is, shoppers would find next to nothing until someone rolled back. So a
build that would hold less than (1 - max_shrink) of the serving build's vectors is not
published; it says where the missing vectors went instead. Nothing is lost: the vectors
embedded on the way stay in the cache and the serving build is untouched."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from shopsearch.errors import IndexShrinkError, NothingToIndexError

if TYPE_CHECKING:  # the CLI imports this module for DEFAULT_MAX_SHRINK; SQLAlchemy only when it runs
    from shopsearch.catalogue.store import CatalogueStore
    from shopsearch.index.store import IndexStore

#: the default: refuse a build with fewer than half the serving build's vectors
DEFAULT_MAX_SHRINK = 0.5


@dataclass(frozen=True)
class Shrink:
    """Vectors of the serving build that the new one would not hold, by why they went."""

    serving: int
    new: int
    unusable: int  # still in the catalogue, but the file is missing or undecodable
    removed: int  # no longer in the catalogue (products or images deleted)

    @property
    def fraction(self) -> float:
        return 1 - self.new / self.serving if self.serving else 0.0


def measure_shrink(serving: int, serving_ids: Iterable[int], new_ids: Iterable[int],
                   catalogue: CatalogueStore) -> Shrink:
    """Compare the serving build (its vector count and image ids) with the image ids of the
    build about to be published."""
    new = set(new_ids)
    lost = set(serving_ids) - new
    known = {img.id for img in catalogue.images()} if lost else set()
    unusable = len(lost & known)
    return Shrink(serving, len(new), unusable, len(lost) - unusable)


def check_shrink(serving: int, serving_ids: Iterable[int], new_ids: Iterable[int],
                 catalogue: CatalogueStore, max_shrink: float | None) -> None:
    """Raise IndexShrinkError when the new build would drop more than `max_shrink` (a
    fraction, 0..1) of the serving build's `serving` vectors; None or >= 1 allows anything.
    Where the vectors went is only worked out for the error (it reads the catalogue)."""
    new_ids = list(new_ids)
    if max_shrink is None or max_shrink >= 1 or serving == 0 or 1 - len(set(new_ids)) / serving <= max_shrink:
        return
    shrink = measure_shrink(serving, serving_ids, new_ids, catalogue)
    why = []
    if shrink.unusable:
        why.append(f"{shrink.unusable:,} of its images have missing or unusable files now "
                   "(`shopsearch catalogue problems` lists them)")
    if shrink.removed:
        why.append(f"{shrink.removed:,} of its images left the catalogue")
    raise IndexShrinkError(
        f"not published: the new build would hold {shrink.new:,} vectors against the serving build's "
        f"{shrink.serving:,} ({shrink.fraction:.0%} fewer, the limit is {max_shrink:.0%})"
        + (f"; {'; '.join(why)}" if why else "")
        + ". The serving build is unchanged and the vectors embedded so far are kept; "
        + ("if the catalogue really shrank, rerun with --max-shrink 1" if shrink.new else
           "an empty index is never published, not even with --max-shrink 1"))


def check_publishable(serving: int | None, serving_ids: Iterable[int], new_ids: Iterable[int],
                      catalogue: CatalogueStore, max_shrink: float | None) -> None:
    """What a build must pass before it is published (`serving`: the serving build's vector
    count, None when nothing serves): check_shrink first (it says where a serving build's vectors
    went), then NothingToIndexError when it would hold no vector at all: an index of nothing
    answers every search with nothing, so not even --max-shrink 1 publishes it."""
    new_ids = list(new_ids)
    if serving is not None:
        check_shrink(serving, serving_ids, new_ids, catalogue, max_shrink)
    if not new_ids:
        st = catalogue.stats()
        todo = "Fix or restore the image files (`shopsearch catalogue problems` lists them)"
        if st.products == 0:
            why = "the catalogue holds no products" + (
                " (is --database-url the database the index was built from?)" if serving else "")
            todo = "Import products (`shopsearch catalogue import FILE`)"
        elif st.images == 0:
            why = f"none of the catalogue's {st.products:,} products has an image"
            todo = "Import the products with their images (an `images` column)"
        elif st.images_ok == 0:
            why = f"none of the catalogue's {st.images:,} images is usable (files missing or undecodable)"
        else:
            why = f"none of the catalogue's {st.images_ok:,} images could be embedded"
        kept = (f"the serving build ({serving:,} vectors) is unchanged" if serving is not None
                else "nothing was published")
        raise NothingToIndexError(f"not published: {why}, so the index would hold no vectors; {kept}. {todo}, "
                                  "then run it again (an empty index is never published, whatever --max-shrink says)")


def refuse_empty_catalogue(store: IndexStore, catalogue: CatalogueStore, max_shrink: float | None) -> None:
    """Before a model is loaded (seconds, and a download for some): a catalogue with no product
    or no image cannot give a build, so it is refused at once with the error the build would
    raise after embedding nothing (check_publishable). Unusable files are left to the build,
    whose rescan may find them fixed."""
    st = catalogue.stats()
    if st.products and st.images:
        return
    manifest = store.current_manifest()
    serving_ids = list(store.load_keys(manifest.build_id)) if manifest is not None else []
    check_publishable(manifest.count if manifest is not None else None, serving_ids, [], catalogue, max_shrink)

