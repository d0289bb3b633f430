"""The Alembic migrations, shipped inside the wheel as `shopsearch.migrations` (pyproject.toml
maps this folder there); shopsearch.catalogue.db finds them through that package."""
