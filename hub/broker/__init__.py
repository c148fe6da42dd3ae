"""The broker side of the hub: the broker it can run itself (a child mosquitto with dynamic security,
or an explicitly insecure in-process amqtt) and the per-agent broker accounts it manages."""

from hub.broker.dynsec import (
    BrokerAccounts,
    BrokerAccountsError,
    DynSecAccounts,
    UnenforcedAccounts,
)
from hub.broker.embedded import (
    AmqttBroker,
    BrokerStartError,
    EmbeddedBroker,
    MosquittoBroker,
    start_embedded_broker,
)

__all__ = [
    "AmqttBroker",
    "BrokerAccounts",
    "BrokerAccountsError",
    "BrokerStartError",
    "DynSecAccounts",
    "EmbeddedBroker",
    "MosquittoBroker",
    "UnenforcedAccounts",
    "start_embedded_broker",
]
