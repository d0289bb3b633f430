"""Domain errors. The library raises these; only the CLI and HTTP edges translate them."""
from __future__ import annotations


class ShopSearchError(Exception):
    """Base class of every error ShopSearch raises on purpose."""

    #: stable machine-readable code, used by the JSON API
    code = "shopsearch_error"
    #: HTTP status the web edge maps this error to
    http_status = 500
    #: exit status the CLI edge maps this error to
    exit_code = 1


class ConfigError(ShopSearchError):
    """A setting or option names something that does not exist or cannot work (a model spec, an
    index type, a re-ranking, an origin): a usage error, exit status 2 like click's own."""

    code = "config_error"
    http_status = 500
    exit_code = 2


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


class NothingImportedError(ShopSearchError):
    """An import in which no row gave a product (every row unreadable, or an empty source)."""

    code = "nothing_imported"
    http_status = 400


class NoUsableImagesError(ShopSearchError):
    """An import whose every image was missing or unusable: its products were written, without
    an image to index."""

    code = "no_usable_images"
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


class NothingToIndexError(ShopSearchError):
    """A build or update would publish an index of no vectors (an empty catalogue, every image
    deleted or unusable): never published, whatever --max-shrink allows."""

    code = "nothing_to_index"
    http_status = 409


class DatabaseUnavailableError(ShopSearchError):
    """The catalogue database URL cannot be parsed, or the database cannot be reached."""

    code = "database_unavailable"
    http_status = 503


class CatalogueEmptyError(ShopSearchError):
    """The catalogue database holds no products (a wrong --database-url, nothing imported yet)."""

    code = "catalogue_empty"
    http_status = 503


class IndexBusyError(ShopSearchError):
    """Another process is building, updating or rolling back the index in this data dir."""

    code = "index_busy"
    http_status = 409
    #: EX_TEMPFAIL: a script may try again later
    exit_code = 75


class IndexWriteError(ShopSearchError):
    """Vectors or a build could not be written (disk full, read-only file system); nothing was published."""

    code = "index_write_failed"
    http_status = 500

    @staticmethod
    def reason_of(e: Exception) -> str:
        """One line for a failed write: the OS's reason (faiss buries it in a C++ assertion)."""
        if isinstance(e, OSError) and e.strerror:
            return e.strerror.lower()
        text = " ".join(str(e).split())
        if "(" in text and text.endswith(")"):  # "... write error in PATH: 4051 != 160000 (No space left on device)"
            return text[text.rindex("(") + 1:-1].lower()
        return text[-200:]


class InvalidRegionError(ShopSearchError):
    """A crop box that is malformed, outside the photo or too small to search."""

    code = "invalid_crop"
    http_status = 400


class UnknownCategoryError(ShopSearchError):
    """A category filter that names no category of the catalogue (or several): a usage error."""

    code = "unknown_category"
    http_status = 400
    exit_code = 2


class ClusterError(ShopSearchError):
    """The Ray cluster cannot run the job: Ray missing, no cluster at the address, or storage
    (the vector cache) that some of its nodes cannot reach."""

    code = "cluster_error"
    http_status = 500


class FeedbackError(ShopSearchError):
    """Feedback that is refused: nothing of it is stored."""

    code = "invalid_feedback"
    http_status = 400


class UnknownRequestError(FeedbackError):
    """No logged search has this request id (never logged, pruned, or logging was off)."""

    code = "unknown_request"
    http_status = 404


class SkuNotShownError(FeedbackError):
    """The product exists but was not among those shown for the request."""

    code = "sku_not_shown"
    http_status = 422


class DuplicateFeedbackError(FeedbackError):
    """The same event for the same product of the same request was recorded already."""

    code = "duplicate_feedback"
    http_status = 409


class FeedbackDisabledError(FeedbackError):
    """The shop switched the feedback log off."""

    code = "feedback_disabled"
    http_status = 409


class NoFeedbackError(ShopSearchError):
    """The feedback log holds nothing an analysis can use (no confirmed queries for this model)."""

    code = "no_feedback"
    http_status = 409


class DownloadError(ShopSearchError):
    """An image URL could not be downloaded; the message is the reason, on one line, with no
    password in it (an import reports it for the rows naming that URL)."""

    code = "download_failed"
    http_status = 502


class FrontError(ShopSearchError):
    """nginx, the front of `serve`, could not start or has stopped: nothing answers on --bind."""

    code = "front_failed"
    exit_code = 1


class PortInUseError(FrontError):
    """Another process listens on `serve`'s --bind address."""

    code = "port_in_use"
