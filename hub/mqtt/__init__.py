"""The hub's MQTT plumbing: client construction and the retained desired-state publisher."""
