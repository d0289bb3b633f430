"""Embedders: `load_embedder(spec, device)` turns a model spec into an Embedder."""
from shopsearch.embedders.base import Embedder, l2_normalize, resolve_device
from shopsearch.embedders.registry import load_embedder, parse_spec, resolved_spec

__all__ = ["Embedder", "l2_normalize", "resolve_device", "load_embedder", "parse_spec", "resolved_spec"]
