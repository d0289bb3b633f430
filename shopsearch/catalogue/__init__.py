"""The catalogue: products, images, categories and index builds in SQL (store.py), the
schema and its migrations (models.py, db.py), importers and the on-disk rescan.

Nothing is re-exported here, so that importing one light module (formats.py: what the CLI
needs to describe its options) does not import SQLAlchemy."""
