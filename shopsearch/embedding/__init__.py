"""Batch embedding of image files: the pipeline (read -> decode -> prepare -> embed -> write
chunk) on CPU workers or the GPU, and the content-addressed vector cache it writes to.
Indexing, the recall benchmark and classifier training all embed through it."""
from shopsearch.embedding.cache import VectorCache
from shopsearch.embedding.pipeline import EmbedReport, PipelineConfig, WorkItem, embed_items, tuned_config

__all__ = ["EmbedReport", "PipelineConfig", "VectorCache", "WorkItem", "embed_items", "tuned_config"]
