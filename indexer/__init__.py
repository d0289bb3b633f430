"""The ingestion pipeline (importers, embedding, index builds) and the merchandisers' CLI."""
