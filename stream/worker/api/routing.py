"""Which worker owns a user: Kafka's partition for the key, and the group's assignment of it.

faust's partition assignor hands every member, with its assignment, the URL of each member
(``canonical_url``, set from ``STREAM_API_URL``) and the table partitions each owns: the leader
builds ``{url: {changelog topic: partitions}}``. faust's own ``app.router`` reads that map, and it
answers wrong with several workers (faust-streaming #514, #187) for three reasons found in its
source (faust/assignor/partition_assignor.py, faust/app/router.py):

* The map is keyed by URL. Members that share one (the default ``http://<hostname>:6066`` of every
  worker on one host, or several workers behind one service name) collapse into one entry: the
  partitions of all but one of them are routed to the survivor, which answers the table's default.
* The key's partition comes from faust's producer (aiokafka's murmur2 over the serialized key),
  while the table holds each key in the partition its *input* record came in on: records produced
  with another partitioner (librdkafka's default ``consistent_random`` is CRC32) live elsewhere.
* Nothing checks the map is current: during a rebalance or a table recovery faust still routes
  by the last map and the owner reads its table as it is.

Here the map is validated (every partition exactly one owner; otherwise those partitions answer
503 and the collision is logged), the partition is :func:`stream.kafka.partitioner.partition_for`
(the one murmur2 of the project, as our producers use), and the server answers 503 whenever this
worker rebalances or recovers, or the owner does not hold the partition any more.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)


def owner_map(
    distribution: Mapping[str, Mapping[str, Sequence[int]]], topic: str, partitions: int
) -> tuple[dict[int, str], list[int]]:
    """Per partition of ``topic``: the URL of its one owner; and the partitions without exactly one.

    >>> owner_map({"http://a:1": {"t": [0, 2]}, "http://b:1": {"t": [1]}}, "t", 3)
    ({0: 'http://a:1', 2: 'http://a:1', 1: 'http://b:1'}, [])
    >>> owner_map({"http://a:1": {"t": [0, 1]}, "http://b:1": {"t": [1]}}, "t", 3)
    ({0: 'http://a:1'}, [1, 2])
    """
    owners: dict[int, str] = {}
    shared: set[int] = set()
    for url, topics in distribution.items():
        for p in topics.get(topic, ()):
            if p in owners and owners[p] != url:
                shared.add(p)
            owners[p] = url
    for p in shared:
        del owners[p]
    missing = sorted(p for p in range(partitions) if p not in owners)
    return owners, missing


class Routing:
    """The owner of each partition of the users table, as of this worker's latest assignment."""

    def __init__(self, own_url: str) -> None:
        self.own_url = own_url
        self.owners: dict[int, str] = {}
        #: True between a revocation and the next assignment
        self.stale = True

    def update(self, distribution: Mapping[str, Mapping[str, Sequence[int]]], topic: str, partitions: int) -> None:
        """Take the map of a new assignment (faust's ``assignor.tables_metadata()``)."""
        owners, missing = owner_map(distribution, topic, partitions)
        if missing:
            log.error(
                "API: partition(s) %s of %s have no single owner in the group's assignment (members: %s); "
                "requests for their users answer 503. Every worker needs its own STREAM_API_URL",
                missing,
                topic,
                ", ".join(sorted(distribution)) or "none",
            )
        if self.own_url not in distribution:
            log.error(
                "API: this worker's URL %s is not in the group's assignment; requests for its users answer 503",
                self.own_url,
            )
        self.owners = owners
        self.stale = False

    def clear(self) -> None:
        """A rebalance began: the map is no longer the group's."""
        self.stale = True

    def owner(self, partition: int) -> str | None:
        """The owner's URL; None while rebalancing or when the partition has no single owner."""
        if self.stale:
            return None
        return self.owners.get(partition)
