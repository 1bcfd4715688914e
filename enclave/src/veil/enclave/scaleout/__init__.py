"""Replicated deployments: attested key release, shared state in PostgreSQL (docs/SCALE-OUT.md).

- ``Coordinator`` / ``serve_coordinator``: the attested service holding the signed manifest,
  which releases the shared key epochs and the model-store key to replicas whose evidence
  satisfies it (``veil coordinator``).
- ``Replica`` / ``ReplicaSettings``: a ``veil serve --state postgres`` replica's side: key
  release, the key ring fed by it, the replay guard and budget ledger in PostgreSQL.
"""

from veil.enclave.scaleout._coordinator import Admission, Coordinator, coordinator_measurement
from veil.enclave.scaleout._coordinator_service import CoordinatorServer, serve_coordinator
from veil.enclave.scaleout._pg import PostgresPool, PostgresReplayStore, StateUnavailable
from veil.enclave.scaleout._replica import (
    KeyReleaseRefused,
    ReleasedTee,
    Replica,
    ReplicaSettings,
    replica_measurement,
)

__all__ = [
    "Admission",
    "Coordinator",
    "CoordinatorServer",
    "KeyReleaseRefused",
    "PostgresPool",
    "PostgresReplayStore",
    "ReleasedTee",
    "Replica",
    "ReplicaSettings",
    "StateUnavailable",
    "coordinator_measurement",
    "replica_measurement",
    "serve_coordinator",
]
