"""A byte-bounded LRU of decoded blobs, keyed by content hash: the only state a worker keeps.

It saves re-sending (and re-decoding) tensors that several requests share, e.g. the inputs of a
certification sweep or a share re-sent after a failure. Losing it is harmless: a caller that
names an evicted blob gets FAILED_PRECONDITION and resends it inline.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch


class BlobCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(tensor: torch.Tensor) -> int:
        return tensor.numel() * tensor.element_size()

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            tensor = self._items.get(key)
            if tensor is not None:
                self._items.move_to_end(key)
            return tensor

    def put(self, key: str, tensor: torch.Tensor) -> None:
        """Keep ``tensor`` under ``key``, evicting the least recently used; larger than the capacity: not kept."""
        size = self._size(tensor)
        if size > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= self._size(old)
            self._items[key] = tensor
            self._bytes += size
            while self._bytes > self.capacity:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= self._size(evicted)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items
