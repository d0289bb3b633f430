"""Vector index over FAISS and the on-disk store of index builds."""
from shopsearch.index.store import IndexStore, new_build_id
from shopsearch.index.sizing import choose_index_type
from shopsearch.index.manifest import IndexManifest, check_model
from shopsearch.index.vector_index import VectorIndex

__all__ = ["IndexStore", "IndexManifest", "VectorIndex", "check_model", "choose_index_type", "new_build_id"]
