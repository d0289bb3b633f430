"""The one interface the pipeline calls an executor through: CPU decode threads or
processes (cpu.py), one process per image for suspects (cpu.py), or nvJPEG on the GPU
(gpu.py). An executor decodes, prepares and embeds; what happens to the vectors and the
failures (chunks, the journal window, the report) is the pipeline's business."""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from shopsearch.embedding.items import Failure, WorkItem

#: receives each embedded batch: the items' cache keys and their (N, dim) vectors
OnVectors = Callable[[list[str], np.ndarray], None]
#: receives each item that could not be embedded, with the reason
OnFailure = Callable[[WorkItem, Failure], None]


class EmbedExecutor(Protocol):
    """Embeds items in order of `items` (batches may complete in that order only), calling
    back from the calling thread; a failing image is reported, never raised."""

    @property
    def horizon(self) -> int:
        """How many images past the last one reported its decoders may reach: a crash
        journal naming that window ahead of the run's progress names the culprit of a crash."""

    def run(self, items: Sequence[WorkItem], on_vectors: OnVectors, on_failure: OnFailure) -> dict[str, float]:
        """Embed `items`; returns seconds per stage where the executor measures them (else {})."""
