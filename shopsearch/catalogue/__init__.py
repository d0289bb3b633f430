"""The catalogue: products, images, categories and index builds in SQL."""
from shopsearch.catalogue.records import ImageInfo, ImageRecord, ProductInfo, ProductRecord
from shopsearch.catalogue.store import CatalogueStore

__all__ = ["CatalogueStore", "ImageInfo", "ImageRecord", "ProductInfo", "ProductRecord"]
