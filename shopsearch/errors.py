"""Domain errors. The library raises these; only the CLI and HTTP edges translate them."""
from __future__ import annotations


class ShopSearchError(Exception):
    """Base class of every error ShopSearch raises on purpose."""

    #: stable machine-readable code, used by the JSON API
    code = "shopsearch_error"
    #: HTTP status the web edge maps this error to
    http_status = 500


class ConfigError(ShopSearchError):
    code = "config_error"
    http_status = 500


class InvalidImageError(ShopSearchError):
    """Bytes are not a decodable image (corrupt, truncated, empty)."""

    code = "invalid_image"
    http_status = 400


class UnsupportedImageError(InvalidImageError):
    """Bytes are not an image format we accept (e.g. a PDF or text file)."""

    code = "unsupported_media_type"
    http_status = 415


class ImageTooLargeError(InvalidImageError):
    """Image exceeds the pixel or byte limits (decompression bombs included)."""

    code = "image_too_large"
    http_status = 400


class ManifestError(ShopSearchError):
    """A catalogue manifest cannot be read at all (not a per-row problem)."""

    code = "manifest_error"
    http_status = 400


class NotFoundError(ShopSearchError):
    code = "not_found"
    http_status = 404


class ProductNotFoundError(NotFoundError):
    code = "product_not_found"


class IndexNotFoundError(NotFoundError):
    """No complete index build exists yet."""

    code = "index_not_found"
    http_status = 503


class ModelMismatchError(ShopSearchError):
    """The embedder differs from the one that built the index."""

    code = "model_mismatch"
    http_status = 409


class ModelUnavailableError(ShopSearchError):
    """Model weights or code are not available on this machine."""

    code = "model_unavailable"
    http_status = 503


class CapabilityError(ShopSearchError):
    """The operation needs something the model lacks (e.g. a text tower)."""

    code = "capability_missing"
    http_status = 409


class SchemaVersionError(ShopSearchError):
    """The database schema is newer than this code, or not migrated."""

    code = "schema_version"
    http_status = 500


class IndexCorruptError(ShopSearchError):
    """An index build on disk fails verification."""

    code = "index_corrupt"
    http_status = 500


class ClassifierError(ShopSearchError):
    code = "classifier_error"
    http_status = 409


class WorkerCrashError(ShopSearchError):
    """Worker processes keep dying, whatever they are given (memory, a broken library)."""

    code = "worker_crash"
    http_status = 500


class IndexShrinkError(ShopSearchError):
    """A new build would drop most of the serving index (files not mounted, wrong database)."""

    code = "index_shrink"
    http_status = 409


class ClusterError(ShopSearchError):
    """The Ray cluster cannot run the job: Ray missing, no cluster at the address, or storage
    (the vector cache) that some of its nodes cannot reach."""

    code = "cluster_error"
    http_status = 500
