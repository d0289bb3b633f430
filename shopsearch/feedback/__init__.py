"""The feedback log: every search (request id, build, model, query vector, filters, products
shown) and what shoppers did with it; no IP address or user identifier is ever stored.

    store = FeedbackStore(catalogue.engine)
    store.record_search(SearchLogEntry.from_result(rid, result, fingerprint, kind="image", source="api"))
    store.record_event(rid, "SKU-1", "confirm")
    store.confirmed_pairs(model_fingerprint=embedder.fingerprint)   # (query vector, product) pairs
    store.prune(days=90)
"""
from shopsearch.feedback.records import (EVENTS, ConfirmedPair, LoggedEvent, LoggedHit, LoggedSearch, SearchLogEntry,
                                         new_request_id)
from shopsearch.feedback.store import FeedbackStore

__all__ = ["EVENTS", "ConfirmedPair", "FeedbackStore", "LoggedEvent", "LoggedHit", "LoggedSearch", "SearchLogEntry",
           "new_request_id"]
