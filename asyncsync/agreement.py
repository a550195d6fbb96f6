"""The settings every ``serve`` worker of one database must share, and where the workers
seen lately differ (README "Many accounts, many workers").

An account's cycle, its integrity check and its keep-alive re-arm themselves with the
interval of whichever worker ran them last; the background slots are counted by each
worker picking; a unit's heartbeat lapses after the timeout of the worker that picks
it up. A worker that says another figure changes them for the whole fleet, silently:
each worker records its own (``worker_settings``), compares them with those of the
others seen within :data:`SEEN_WITHIN_S`, and says where they differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Seconds since its last word within which a worker counts as running: four of its
#: refreshes (every 30 s). A worker stopped (or killed) longer ago than this is ignored.
SEEN_WITHIN_S = 120.0
#: Rows of workers silent for longer than this (a day) are deleted by the next worker.
FORGET_AFTER_S = 86400.0


@dataclass(frozen=True)
class WorkerSettings:
    """What one worker runs with, of the settings the whole fleet must share."""

    worker: str  # ``asyncsync worker host:pid``
    interval_s: float
    integrity_interval_s: float
    background_slots: int
    heartbeat_s: float


@dataclass(frozen=True)
class Setting:
    """One setting every worker must share: its flag, env var and what a split does."""

    field: str  # the attribute of WorkerSettings (and ServeOptions)
    flag: str
    env: str
    consequence: str


SETTINGS = (
    Setting("interval_s", "--interval", "ASYNCSYNC_INTERVAL_S",
            "an account's next cycle (and keep-alive) follows whichever worker ran it last"),
    Setting("integrity_interval_s", "--integrity-interval", "ASYNCSYNC_INTEGRITY_INTERVAL_S",
            "an account's next integrity check follows whichever worker ran it last"),
    Setting("background_slots", "--background-slots", "ASYNCSYNC_BACKGROUND_SLOTS",
            "each worker admits backfill months and integrity checks up to its own figure"),
    Setting("heartbeat_s", "--heartbeat-timeout", "ASYNCSYNC_HEARTBEAT_TIMEOUT_S",
            "a silent worker's units are taken over after whichever timeout the picker has"),
)  # fmt: skip


def value_of(settings: WorkerSettings, setting: Setting) -> float:
    return float(getattr(settings, setting.field))


def shown(value: float) -> str:
    """``60``, not ``60.0``; ``0.5`` as it is."""
    return f"{value:g}"


@dataclass(frozen=True)
class Disagreement:
    """Another worker runs ``setting`` with another value than this one."""

    setting: Setting
    other: str
    theirs: float
    ours: float

    def sentence(self) -> str:
        s = self.setting
        return (
            f"{self.other} runs {s.flag} {shown(self.theirs)} ({s.env}), this one "
            f"{shown(self.ours)}: {s.consequence}; every worker must use the same"
        )


def disagreements(own: WorkerSettings, others: Iterable[WorkerSettings]) -> list[Disagreement]:
    """Where each of ``others`` differs from ``own`` (its own row is not compared)."""
    found = []
    for other in others:
        if other.worker == own.worker:
            continue
        for setting in SETTINGS:
            theirs, ours = value_of(other, setting), value_of(own, setting)
            if theirs != ours:
                found.append(Disagreement(setting, other.worker, theirs, ours))
    return found


@dataclass(frozen=True)
class Split:
    """A setting the workers seen lately do not share: each value and who runs it."""

    setting: Setting
    values: dict[str, list[str]]  # shown value -> workers

    def sentence(self) -> str:
        s = self.setting
        held = "; ".join(f"{value} on {', '.join(who)}" for value, who in self.values.items())
        return (
            f"workers disagree on {s.flag} ({s.env}): {held}. {s.consequence[0].upper()}"
            f"{s.consequence[1:]}; every worker must use the same"
        )

    def as_dict(self) -> dict[str, object]:
        return {"setting": self.setting.flag, "env": self.setting.env,
                "values": self.values, "consequence": self.setting.consequence}  # fmt: skip


def splits(workers: Sequence[WorkerSettings]) -> list[Split]:
    """The settings on which ``workers`` (those seen lately) differ, for ``status``."""
    found = []
    for setting in SETTINGS:
        values: dict[str, list[str]] = {}
        for settings in sorted(workers, key=lambda w: (value_of(w, setting), w.worker)):
            values.setdefault(shown(value_of(settings, setting)), []).append(settings.worker)
        if len(values) > 1:
            found.append(Split(setting, values))
    return found
