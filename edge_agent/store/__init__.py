"""The device's durable state: verified release store, install journal, identity.

Every install step is idempotent and journaled; :meth:`ReleaseStore.recover` at startup
leaves the device serving a verified release whatever point a crash interrupted.
"""

from edge_agent.store.durable import free_bytes
from edge_agent.store.identity import (
    DeviceIdentity,
    create_api_token,
    is_enrolled,
    load_api_token,
    load_device_key,
    load_identity,
    load_trusted_root,
    write_device_key,
    write_identity,
    write_trusted_root,
)
from edge_agent.store.release_store import (
    STATE_DB,
    Recovery,
    ReleaseFiles,
    ReleaseManifest,
    ReleaseStore,
    release_dir_name,
    resumable,
    sha256_file,
)
from edge_agent.store.state_db import STORE_RUNBOOK, InstallRecord, InstallStep, StateDB

__all__ = [
    "STATE_DB",
    "STORE_RUNBOOK",
    "DeviceIdentity",
    "InstallRecord",
    "InstallStep",
    "Recovery",
    "ReleaseFiles",
    "ReleaseManifest",
    "ReleaseStore",
    "StateDB",
    "create_api_token",
    "free_bytes",
    "is_enrolled",
    "load_api_token",
    "load_device_key",
    "load_identity",
    "load_trusted_root",
    "release_dir_name",
    "resumable",
    "sha256_file",
    "write_device_key",
    "write_identity",
    "write_trusted_root",
]
