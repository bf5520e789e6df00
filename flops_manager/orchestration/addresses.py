"""Service addresses the manager hands out: Oakestra round-robin IPs (10.30.x.y), never twice.

FL actors need the aggregator's address before it runs, so the manager picks each service's
`rr_ip` itself and writes it into the SLA. An address is unique across everything this manager
(or any manager sharing its database) has ever deployed: each allocation is a document whose
`_id` is the address, so the database's unique `_id` index settles races between threads and
managers, and a restarted manager cannot hand out an address again. Addresses are never reused,
not even after the service is gone: a stale learner must not reach a newer project's aggregator.

Candidates are drawn at random from the pool and retried on a duplicate; nothing is derived from
a hash of the project, which would collide.
"""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

ADDRESSES = "addresses"
# Oakestra's service network is 10.30.0.0/16. Oakestra assigns addresses of its own to services
# that do not ask for one; the manager keeps to the top half by default to stay clear of those.
DEFAULT_POOL = "10.30.128.0/17"
_SERVICE_NETWORK = ipaddress.IPv4Network("10.30.0.0/16")


class AddressError(RuntimeError):
    """No address could be allocated (the pool is exhausted or the database refused)."""


def _is_duplicate_key(error: Exception) -> bool:
    """pymongo and montydb each raise their own DuplicateKeyError; recognise both."""
    return type(error).__name__ == "DuplicateKeyError"


class AddressAllocator:
    """Hands out unique rr_ips from `pool`, persisted in a pymongo-compatible collection.

    `collection` is a pymongo or montydb collection; `lock` serialises calls when the database
    needs it (montydb: pass the store's lock, see `from_store`).
    """

    def __init__(
        self,
        collection: Any,
        *,
        pool: str = DEFAULT_POOL,
        lock: AbstractContextManager[Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        network = ipaddress.ip_network(pool)
        if not isinstance(network, ipaddress.IPv4Network) or not network.subnet_of(_SERVICE_NETWORK):
            raise AddressError(f"address pool {pool} is not inside Oakestra's service network {_SERVICE_NETWORK}")
        self._collection = collection
        self._network = network
        self._lock: AbstractContextManager[Any] = lock if lock is not None else nullcontext()
        self._local = threading.Lock()
        self._rng = rng or random.SystemRandom()
        # host addresses only: not the network or broadcast address, nor x.y.z.0 / x.y.z.255
        self._first = int(network.network_address) + 1
        self._last = int(network.broadcast_address) - 1

    @classmethod
    def from_store(cls, store: Any, *, pool: str = DEFAULT_POOL) -> AddressAllocator:
        """An allocator keeping its records in the `addresses` collection of a `ProjectStore`'s database."""
        database = getattr(store, "_db", None)
        if database is None:
            raise AddressError("the store does not expose a database for address allocation")
        lock = getattr(store, "_lock", None)
        return cls(database[ADDRESSES], pool=pool, lock=lock)

    @property
    def pool(self) -> str:
        return str(self._network)

    def _candidate(self) -> str:
        while True:
            address = ipaddress.IPv4Address(self._rng.randint(self._first, self._last))
            if address.packed[-1] not in (0, 255):
                return str(address)

    def allocate(self, owner: str, *, attempts: int = 64) -> str:
        """A new address recorded for `owner` (e.g. "<project id>/<service>"); never handed out before."""
        for _ in range(attempts):
            address = self._candidate()
            if self._insert(address, owner):
                return address
        # A crowded pool: walk it in order instead of guessing.
        with self._lock:
            taken = {doc["_id"] for doc in self._collection.find({}, {"_id": 1})}
        for value in range(self._first, self._last + 1):
            address_obj = ipaddress.IPv4Address(value)
            if address_obj.packed[-1] in (0, 255) or str(address_obj) in taken:
                continue
            if self._insert(str(address_obj), owner):
                return str(address_obj)
        raise AddressError(f"the address pool {self._network} is exhausted")

    def _insert(self, address: str, owner: str) -> bool:
        record = {"_id": address, "owner": owner, "allocated_at": time.time(), "released_at": None}
        with self._local, self._lock:
            try:
                self._collection.insert_one(record)
            except Exception as error:
                if _is_duplicate_key(error):
                    return False
                raise AddressError(f"cannot record address {address}: {error}") from error
        return True

    def release(self, address: str) -> None:
        """Mark `address` as no longer in use. It stays taken: addresses are never handed out twice."""
        with self._local, self._lock:
            self._collection.update_one({"_id": address}, {"$set": {"released_at": time.time()}})

    def owner(self, address: str) -> str | None:
        with self._local, self._lock:
            doc = self._collection.find_one({"_id": address})
        return None if doc is None else str(doc.get("owner"))

    def allocated(self) -> list[str]:
        """Every address ever handed out."""
        with self._local, self._lock:
            return sorted(str(doc["_id"]) for doc in self._collection.find({}))
