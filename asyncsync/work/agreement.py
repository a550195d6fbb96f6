"""A worker compares the settings every worker must share with those of the others seen
lately (:mod:`asyncsync.agreement`): one warning for each disagreement, as it appears."""

from __future__ import annotations

import logging

from .. import metrics
from ..agreement import SETTINGS, Disagreement, WorkerSettings, disagreements, shown
from ..errors import DatabaseError
from ..options import ServeOptions
from .ports import Fleet

log = logging.getLogger(__name__)


def own_settings(name: str, options: ServeOptions) -> WorkerSettings:
    return WorkerSettings(
        worker=name, interval_s=options.interval_s,
        integrity_interval_s=options.integrity_interval_s,
        background_slots=options.background_slots, heartbeat_s=options.heartbeat_s,
    )  # fmt: skip


class Agreement:
    """What this worker said of the others' settings (each disagreement once)."""

    def __init__(self, fleet: Fleet, options: ServeOptions) -> None:
        self._fleet = fleet
        self._own = own_settings(fleet.name, options)
        self._said: set[Disagreement] = set()
        self._refused = False  # the role may not write worker_settings: said once

    async def check(self) -> list[Disagreement]:
        """Say this worker's settings, compare; warn of each disagreement new since the
        last check (the database away: nothing said, the readiness check says why)."""
        try:
            seen = await self._fleet.settings(self._own)
        except DatabaseError as exc:
            if exc.sqlstate == "42501" and not self._refused:  # insufficient_privilege
                self._refused = True
                log.warning("this worker's settings are not compared with the other "
                            "workers': %s (grant its role SELECT, INSERT, UPDATE and DELETE "
                            "on worker_settings)", exc)  # fmt: skip
            return sorted(self._said, key=_order)
        found = disagreements(self._own, seen)
        for item in sorted(set(found) - self._said, key=_order):
            log.warning(
                "%s", item.sentence(),
                extra={"fields": {"event": "worker_settings_differ", "worker": item.other,
                                  "setting": item.setting.flag, "theirs": item.theirs,
                                  "ours": item.ours}},
            )  # fmt: skip
        for item in sorted(self._said - set(found), key=_order):
            log.info(
                "%s no longer runs %s %s beside this one (changed, stopped, or silent for two "
                "minutes)",
                item.other, item.setting.flag, shown(item.theirs),
            )  # fmt: skip
        self._said = set(found)
        for setting in SETTINGS:
            differ = {item.other for item in found if item.setting == setting}
            metrics.SETTINGS_DIFFER.labels(setting.flag).set(len(differ))
        return found


def _order(item: Disagreement) -> tuple[str, str, float]:
    return item.other, item.setting.flag, item.theirs
