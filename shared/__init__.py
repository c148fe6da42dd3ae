"""Contracts shared by the hub, the agents and the trainer.

Nothing here imports Flask, TensorFlow or OpenVINO: every role installs this package.
"""

__version__ = "0.1.0"
