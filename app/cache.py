"""A bounded cache of predictions, keyed by the rows a request gave.

Monitoring systems poll every patient on a ward, every few minutes, while new values
arrive hourly: most requests repeat the last one. The key is the checkpoint (name and
version: a reload starts fresh keys), whether contributions were asked for, and a digest
of the validated rows (in a fixed order, so the order a client sends them in does not
matter) and the statics: the same rows tensorise to the same network input and give the
same NEWS2, and both are kept. Responses are built from them with this request's own id,
times and warnings.

Bounded in entries (least recently used out); ~3 KB each for the default model. The
most recently built responses of stays in hours (`max_responses`, ~4 KB each, the
attention list as encoded JSON) are kept with their stays too: a hit then copies one.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.schemas import Answer
from models.checkpoint import Checkpoint
from models.predict import Prediction

__all__ = ["CachedStay", "Key", "PredictionCache", "rows_key"]

Key = tuple[str, str, bool, bytes]


@dataclass
class CachedStay:
    """What a stay's key determines: the network's prediction, the NEWS2 (as the response
    writes it) and, once built, the response in hours less what each request has of its own
    (id, warnings, what-if; see app.service). Responses share its parts, read-only."""

    prediction: Prediction
    news2: Mapping[str, object]
    response: Answer | None = None  # set and cleared by PredictionCache.keep_response


def rows_key(ckpt: Checkpoint, explain: bool, arrays: Sequence[np.ndarray], extra: str
             ) -> Key:
    """The cache key of a stay given as arrays (and `extra` text) scored with `ckpt`."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        data = np.ascontiguousarray(array).tobytes()
        digest.update(len(data).to_bytes(8, "little") + data)
    digest.update(extra.encode())
    return ckpt.name, ckpt.version, explain, digest.digest()


class PredictionCache:
    def __init__(self, max_entries: int, max_responses: int = 256) -> None:
        self.max_entries = max_entries
        self.max_responses = min(max_responses, max_entries)  # a ward's patients, and more
        self._entries: OrderedDict[Key, CachedStay] = OrderedDict()
        self._responses: OrderedDict[int, CachedStay] = OrderedDict()  # stays holding one
        self._lock = threading.Lock()  # the inference thread and the FHIR route's pool
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        """False with 0 entries (VITALCAST_CACHE_ENTRIES=0): nothing is kept, so callers
        need not compute keys."""
        return self.max_entries > 0

    def get(self, key: Key, count_miss: bool = True) -> CachedStay | None:
        """The stay held for `key`, now the most recently used; None when not held."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += count_miss
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: Key, stay: CachedStay) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._entries[key] = stay
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def keep_response(self, stay: CachedStay, response: Answer) -> None:
        """Keep `response` with `stay`; the stay that kept one longest ago loses its own
        beyond `max_responses`."""
        if self.max_responses <= 0:
            return
        with self._lock:
            stay.response = response
            self._responses[id(stay)] = stay
            self._responses.move_to_end(id(stay))
            while len(self._responses) > self.max_responses:
                _, oldest = self._responses.popitem(last=False)
                oldest.response = None

    def __len__(self) -> int:
        return len(self._entries)
