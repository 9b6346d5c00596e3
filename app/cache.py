"""A bounded cache of predictions, keyed by exactly what the network would see.

Monitoring systems poll every patient on a ward, every few minutes, while new values
arrive hourly: most requests repeat the last one. The key is the checkpoint (name and
version: a reload starts fresh keys) and a digest of the stay's tensors (values, masks,
hours-since, statics, window): two requests that tensorise to the same bytes get the same
network outputs, and whatever differs only outside the model's view (the patient id, the
order of the rows, variables the model does not use) still hits. Responses are built from
the cached prediction with this request's own id, times and warnings.

Bounded in entries (least recently used out); ~3 KB each for the default model.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from models.checkpoint import Checkpoint
from models.features import Tensors
from models.predict import Prediction

__all__ = ["PredictionCache", "stay_key"]

Key = tuple[str, str, bool, bytes]


def stay_key(ckpt: Checkpoint, tensors: Tensors, i: int, explain: bool = True) -> Key:
    """The cache key of stay `i` of `tensors` (tensorised with `ckpt`'s normaliser and grid),
    with or without the contributions."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (tensors.values[i], tensors.mask[i], tensors.delta[i], tensors.static[i],
                  tensors.step_mask[i], tensors.offset[i:i + 1]):
        digest.update(array.tobytes())
    return ckpt.name, ckpt.version, explain, digest.digest()


class PredictionCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Key, Prediction] = OrderedDict()
        self._lock = threading.Lock()  # the inference thread and the FHIR route's pool
        self.hits = 0
        self.misses = 0

    def get(self, key: Key, count_miss: bool = True) -> Prediction | None:
        """The prediction for `key`, now the most recently used; None when not held."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += count_miss
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: Key, prediction: Prediction) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = prediction
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
