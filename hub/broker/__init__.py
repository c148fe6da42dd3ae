"""The broker the hub can run itself: a child mosquitto, or in-process amqtt as a fallback."""

from hub.broker.embedded import (
    AmqttBroker,
    BrokerStartError,
    EmbeddedBroker,
    MosquittoBroker,
    start_embedded_broker,
)

__all__ = ["AmqttBroker", "BrokerStartError", "EmbeddedBroker", "MosquittoBroker", "start_embedded_broker"]
