"""Bounds on a desired state, checked before any request: origin, semantic version, no silent downgrade."""

from __future__ import annotations

from agents.models.active import ActiveModel
from agents.models.download import BundleDownloader
from agents.models.errors import ModelRefused, Refusal
from shared.schemas import DesiredModel


def check_trust(downloader: BundleDownloader, desired: DesiredModel, current: ActiveModel | None) -> None:
    """Refuse ``desired`` before any request when its origin or version is out of bounds.

    Raises:
        ModelRefused: ``bundle_url`` is not on the hub's origin, the version is not semver, or it
            is below the running version of the same model without ``rollback``.
        ModelError: the downloader was given no hub URL.
    """
    downloader.request_url(desired)
    try:
        DesiredModel.version_key(desired.model_version)
    except ValueError as exc:
        raise ModelRefused(
            f"desired {desired.model_name}: {exc}; bundles carry semantic versions, so none can match "
            "it: desire a version registered on the hub",
            Refusal.NOT_SEMVER,
        ) from None
    if current is not None and not desired.rollback and desired.downgrades(current.name, current.version):
        raise ModelRefused(
            f"desired {desired.model_name} {desired.model_version} is lower than the running "
            f"{current.name} {current.version} and the desired state is not marked as a rollback: "
            "refused, the current model keeps running; desire "
            f"{current.version} or newer, or go back through the hub (a rollout rollback, or "
            "PUT /api/v1/agents/<id>/desired, which marks a lower version as rollback: true)",
            Refusal.DOWNGRADE,
        )
