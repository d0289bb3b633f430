"""Retrieval benchmarks: labelled datasets -> ranked product lists -> recall@k and friends.

`metrics` is pure (rankings in, numbers out); `datasets` turns a labelled tree into a
gallery and queries; `runner` embeds (through the indexer pipeline and its vector cache),
indexes and searches them with the SearchService; `report` renders tables, JSON and plots."""
