"""The catalogue source formats `import_catalogue` reads (importers.py), apart from the
importers themselves so that the CLI can list them without importing SQLAlchemy or PIL."""
from __future__ import annotations

FORMATS = ("csv", "jsonl", "imagefolder", "grocerystore")
