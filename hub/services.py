"""The hub's object graph, built in one place: :func:`build_services`.

Every hub process composes itself from it: the web app (:func:`hub.app.create_app`, also under
gunicorn through :mod:`hub.wsgi`), ``leukonet hub serve`` (web + ingest + rollout ticker in one
process) and ``leukonet hub ingest`` (workers only). Whoever builds a :class:`Services` closes it
once, with :meth:`Services.close`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.auth import TokenAuth
from hub.broker.dynsec import BrokerAccounts, DynSecAccounts, UnenforcedAccounts
from hub.config import HubConfig
from hub.db.session import Database
from hub.evidence import EvidenceStore
from hub.identity.enrollment import Enrollment
from hub.identity.tokens import TokenStore
from hub.ingest.stats import IngestStats
from hub.mqtt.publisher import MqttPublisher
from hub.registry.service import ModelRegistry, load_trusted_keys
from hub.registry.store import FilesystemBundleStore
from hub.rollouts.engine import RolloutEngine
from hub.rollouts.store import model_users
from hub.training.service import TrainingJobs

MIB = 1024 * 1024


@dataclass
class Services:
    """Everything a hub process works with; request handlers reach it through ``hub_ext``."""

    config: HubConfig
    db: Database
    auth: TokenAuth
    registry: ModelRegistry
    publisher: MqttPublisher
    rollouts: RolloutEngine
    training: TrainingJobs
    #: the broker's account manager (per-agent logins and ACLs) that enrollment works through
    accounts: BrokerAccounts
    enrollment: Enrollment
    #: evidence images agents upload (files under ``evidence_dir``, rows in the database)
    evidence: EvidenceStore
    #: counters of an ingest worker running in this process (``serve``); None in a web-only one
    ingest_stats: IngestStats | None = None

    def close(self) -> None:
        """Release the MQTT connections (publisher, broker accounts) and the database engine. Idempotent."""
        self.publisher.close()
        self.accounts.close()
        self.db.dispose()


def build_services(config: HubConfig, *, ingest_stats: IngestStats | None = None) -> Services:
    """Compose the hub for ``config``: database engine, bundle store + registry (its delete guard
    asks the rollouts), evidence store, token table, MQTT publisher, rollout engine, training-job
    queue, and agent enrollment through the broker's dynamic security
    (``enrollment.dynamic_security``) or, for a broker that does not enforce identities, an
    unenforced stand-in that says so in the log.

    Raises:
        ConfigError: a trusted key file cannot be loaded.
    """
    db = Database(config.db_url)
    publisher = MqttPublisher(config.mqtt)
    registry = ModelRegistry(
        db,
        FilesystemBundleStore(config.data_dir / "bundles"),
        load_trusted_keys(config.trusted_keys),
        max_bytes=config.max_upload_mb * MIB,
        limits=config.bundle_limits(),
        usage_checks=[model_users],
    )
    accounts: BrokerAccounts = (
        DynSecAccounts(config.mqtt) if config.enrollment.dynamic_security else UnenforcedAccounts()
    )
    return Services(
        config=config,
        db=db,
        auth=TokenAuth(config.tokens, TokenStore(db)),
        registry=registry,
        publisher=publisher,
        rollouts=RolloutEngine(db, publisher, config.public_url, config.rollouts),
        training=TrainingJobs(db, registry, config.training),
        accounts=accounts,
        enrollment=Enrollment(db, accounts, config.enrollment),
        evidence=EvidenceStore.from_config(config, db),
        ingest_stats=ingest_stats,
    )
