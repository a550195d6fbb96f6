"""Every command-line flag, its environment twin, and the parser of its text.

One table (:data:`FLAGS`, in :mod:`.table`) binds each flag to a field of an options dataclass in
:mod:`asyncsync.options`, which states the default. A value is validated by the same
parser whether it came from a flag or from the environment, and a bad one is a
:class:`~asyncsync.errors.ConfigError` naming where it came from (``--rate-limit`` or
``TINY_RATE_LIMIT_PER_MINUTE``). Flags win over environment variables.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..options import CommonOptions
from ..parsers import month
from .table import FLAGS, MODES, TITLES, Flag, Mode

__all__ = ["FLAGS", "MODES", "TITLES", "Flag", "Invocation", "Mode", "month", "parse"]


def _default_text(cls: type, name: str) -> str:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                return ""
            if value is None or value is False or value == ():
                return ""
            if isinstance(value, tuple):
                value = ",".join(str(v) for v in value)
            return f" (default: {value})".replace("%", "%%")
    raise AssertionError(f"{cls.__name__} has no field {name}")


def _add(parser: argparse.ArgumentParser | Any, flag: Flag) -> None:
    help_text = f"{flag.help}{'' if flag.secret else _default_text(flag.target, flag.field)}"
    help_text += f" [env: {flag.env}]"
    dest = f"{flag.target.__name__}.{flag.field}"
    if flag.boolean:
        parser.add_argument(
            flag.flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
            help=help_text,
        )  # fmt: skip
    elif flag.positional:
        parser.add_argument(dest, nargs=flag.nargs, default=None, help=help_text,
                            metavar=flag.metavar or flag.flag.upper())  # fmt: skip
    elif flag.const is not None:
        parser.add_argument(flag.flag, dest=dest, default=None, help=help_text, nargs="?",
                            const=flag.const, metavar=flag.metavar or "TEXT")  # fmt: skip
    else:
        parser.add_argument(flag.flag, dest=dest, default=None, help=help_text,
                            metavar=flag.metavar or "TEXT")  # fmt: skip


class _Version(argparse.Action):
    """``--version``: the installed version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **_: Any) -> None:
        super().__init__(
            option_strings, dest="version", default=argparse.SUPPRESS, nargs=0,
            help="show the installed version and exit",
        )  # fmt: skip

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        import asyncsync

        sys.stdout.write(f"asyncsync {asyncsync.__version__}\n")
        parser.exit()


def build_parser(mode: str | None) -> argparse.ArgumentParser:
    """The parser of one mode; with None, every mode's groups (for ``--help``)."""
    prog = "asyncsync" if mode is None else f"asyncsync {mode}"
    parser = argparse.ArgumentParser(
        prog=prog,
        # `--mod status` was taken for argparse's abbreviation of --mode, which pick_mode had
        # not seen: a sync ran, with writes and requests, where status was asked.
        allow_abbrev=False,
        description=(
            "Mirror Tiny ERP service orders into PostgreSQL. Usage: asyncsync MODE [options] "
            "(or --mode MODE / ASYNCSYNC_MODE). Modes: "
            + "; ".join(f"{name}: {m.help}" for name, m in MODES.items())
            + ". Every flag has an environment variable; flags win."
        ),
    )
    parser.add_argument("--version", action=_Version)
    parser.add_argument(
        "--mode", metavar="MODE", default=None,
        help=f"what to run, also the first word: {', '.join(MODES)} (default: sync) "
        "[env: ASYNCSYNC_MODE]",
    )  # fmt: skip
    groups = list(TITLES) if mode is None else [g for g in TITLES if g in MODES[mode].groups]
    # A flag several modes share (--interval) is shown once; one the mode has no use for
    # (--json of serve) not at all: given, argparse refuses it.
    shown: set[str] = set() if mode is None else set(MODES[mode].unread)
    for cls in groups:
        group = parser.add_argument_group(TITLES[cls])
        for flag in FLAGS:
            if flag.target is cls and flag.flag not in shown:
                shown.add(flag.flag)
                _add(group, _shared(flag, groups))
    return parser


def _shared(flag: Flag, groups: list[type]) -> Flag:
    """``flag``, its help saying which other groups shown have a flag of that name (each
    mode's own ``--help`` tells what it means there), and their variable when it is not
    this one's (status's ``--full``: a full sync's variable must not reach it)."""
    others = [
        TITLES[f.target] + ("" if f.env == flag.env else f" (its variable {f.env})")
        for f in FLAGS
        if f.flag == flag.flag and f.target is not flag.target and f.target in groups
    ]
    if not others:
        return flag
    also = f"{TITLES[flag.target]}: {flag.help}; also for {', '.join(others)} (see MODE --help)"
    return dataclasses.replace(flag, help=also)


def pick_mode(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """The mode (first positional word, ``--mode``, or ``ASYNCSYNC_MODE``) and the rest."""
    rest = list(argv)
    named: tuple[str, str] | None = None
    if rest and not rest[0].startswith("-"):
        named = (rest.pop(0), "the mode")
    flagged: str | None = None
    for i, arg in enumerate(rest):
        if arg == "--mode":
            if i + 1 == len(rest) or rest[i + 1].startswith("-"):
                raise ConfigError(f"--mode needs a mode: one of {', '.join(MODES)}")
            flagged = rest[i + 1]
            del rest[i : i + 2]
            break
        if arg.startswith("--mode="):
            flagged = arg.split("=", 1)[1]
            del rest[i]
            break
    if flagged is not None:
        if named is not None and named[0] != flagged:  # `status --mode sync` ran a sync
            raise ConfigError(f"two modes given: {named[0]} (the mode word) and {flagged} "
                              "(--mode); give one")  # fmt: skip
        named = (flagged, "--mode")
    if named is None and environ.get("ASYNCSYNC_MODE", "").strip():
        named = (environ["ASYNCSYNC_MODE"], "ASYNCSYNC_MODE")
    if named is None:
        return None, rest
    value, source = named[0].strip(), named[1]
    if value not in MODES:
        raise ConfigError(f"{source} must be one of {', '.join(MODES)}, got {value!r}")
    return value, rest


def read_values(
    ns: argparse.Namespace,
    environ: Mapping[str, str],
    groups: Sequence[type],
    *,
    unread: Sequence[str] = (),
) -> dict[tuple[type, str], object]:
    """Parse every flag of ``groups`` given as a flag or an env var; (class, field) → value.
    The flags in ``unread`` are not read (nor their variables: one environment file
    serves every mode)."""
    values: dict[tuple[type, str], object] = {}
    for flag in FLAGS:
        if flag.target not in groups or flag.flag in unread:
            continue
        given = getattr(ns, f"{flag.target.__name__}.{flag.field}", None)
        if isinstance(given, list):  # a positional taking several words
            given = " ".join(given) if given else None
        if given is not None and flag.boolean:
            values[(flag.target, flag.field)] = given
            continue
        # A word after the mode is named as the user knows it ("the action"), not by its
        # parser's name ("accounts-action").
        named = f"the {flag.field.replace('_', ' ')}" if flag.positional else flag.flag
        source, raw = (named, given) if given is not None else (flag.env, environ.get(flag.env))
        if raw is None or (not raw.strip() and source == flag.env):
            continue  # unset, or set to nothing (or spaces only): the default
        # The message names the other way to set it too: an operator who finds a bad value
        # in a unit file and one who finds it in an environment file look for the same.
        twin = f"env {flag.env}" if source != flag.env else f"flag {flag.flag}"
        if flag.positional and source == flag.env:
            twin = f"the {flag.field.replace('_', ' ')} after the mode"
        kept = raw.strip()
        if source == flag.env and len(kept) > 1 and kept[0] in "'\"" and kept[-1] == kept[0]:
            # docker/podman --env-file keeps quotes that systemd and a shell strip: a quoted
            # refresh token was refused as expired (exit 4, "run authorize").
            raise ConfigError(f"{source} is quoted: an env file read by docker or podman "
                              f"--env-file takes its values without quotes ({twin})")  # fmt: skip
        try:
            values[(flag.target, flag.field)] = flag.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source} {exc} ({twin})") from None
    return values


def build(cls: type, values: Mapping[tuple[type, str], object]) -> Any:
    """An instance of the options dataclass ``cls``, nested groups included."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = build(hints[f.name], values)
        elif (cls, f.name) in values:
            kwargs[f.name] = values[(cls, f.name)]
    return cls(**kwargs)


@dataclass(frozen=True)
class Invocation:
    """What the command line asks for."""

    mode: str
    common: CommonOptions
    options: Any


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Invocation:
    """Mode and options from ``argv`` and ``environ``; ConfigError when something is off.

    ``--help`` and ``--version`` print and exit (SystemExit), as argparse does.
    """
    if {"-h", "--help", "--version"} & set(argv):  # a bad ASYNCSYNC_MODE hid them (exit 2)
        environ = {k: v for k, v in environ.items() if k != "ASYNCSYNC_MODE"}
    mode, rest = pick_mode(argv, environ)
    named = mode is not None
    if mode is None:
        if any(a in ("-h", "--help", "--version") for a in rest):
            build_parser(None).parse_args(rest)
        mode = "sync"
    spec = MODES[mode]
    parser = build_parser(mode)
    # Intermixed: ids and keys after an option (`failures retry --account acme 123`) are
    # the action's words, not "unrecognized arguments".
    ns, extra = parser.parse_known_intermixed_args(rest)
    if extra:
        cut = next((e for e in extra if e.partition("=")[0] in _PREFIXES), None)
        if cut is not None:
            flag = cut.partition("=")[0]
            raise ConfigError(f"{flag} is not a flag: did you mean --mode? (no flag is "
                              "abbreviated)")  # fmt: skip
        word = next((e for e in extra if e in MODES), None)
        if word is not None and not named:  # `asyncsync --database-url X status`
            raise ConfigError(
                f"the mode comes first: asyncsync {word} [options] (or --mode {word}); "
                f"got options before {word!r}"
            )
        # One sentence (argparse printed its 19 lines of usage first), what follows a
        # secret flag masked ("--client-secret s3cr3t" in a log), and which modes read a
        # flag this one does not.
        said = f"unrecognized arguments: {' '.join(_masked(extra))}"
        unread = [(w, _readers(w)) for w in (e.partition("=")[0] for e in extra)]  # no value
        elsewhere = [f"{w} is read by {', '.join(modes)}" for w, modes in unread if modes]
        raise ConfigError(said + (f" ({'; '.join(elsewhere)})" if elsewhere else ""))
    if getattr(ns, "CommonOptions.account", None) is not None and any(
        getattr(ns, f"{cls.__name__}.all_accounts", None) for cls in spec.groups
    ):  # `status --all-accounts --account x` listed every account, the key unread
        raise ConfigError("--account and --all-accounts: give one")
    values = read_values(ns, environ, spec.groups, unread=spec.unread)
    options = build(spec.options, values)
    _refuse_elsewhere(spec, ns, options)
    return Invocation(mode, build(CommonOptions, values), options)


def _refuse_elsewhere(spec: Mode, ns: argparse.Namespace, options: object) -> None:
    """A flag given on the command line in a case of the mode that does not read it
    (``failures retry --state review``, ``backfill --enqueue --partitions 9``): refused,
    not silently ignored."""
    for rule in spec.only:
        if getattr(options, rule.field) in rule.values:
            continue
        for word in rule.flags:
            flag = next(f for f in FLAGS if f.flag == word and f.target in spec.groups)
            if getattr(ns, f"{flag.target.__name__}.{flag.field}", None) is not None:
                raise ConfigError(f"{word} is read only by {rule.case}: this command would "
                                  "ignore it")  # fmt: skip


def _readers(word: str) -> list[str]:
    """The modes that read the flag ``word``."""
    return [name for name, m in MODES.items()
            if word not in m.unread
            and any(f.flag == word and f.target in m.groups for f in FLAGS)]  # fmt: skip


#: What argparse took for ``--mode`` once (``--mo``, ``--mod``): flags are not abbreviated.
_PREFIXES = frozenset({"--mo", "--mod"})

#: The flags whose values are secrets, never shown.
_SECRETS = tuple(f.flag for f in FLAGS if f.secret)


def _secret(flag: str) -> bool:
    return len(flag) > 2 and flag.startswith("--") and any(s.startswith(flag) for s in _SECRETS)


def _masked(args: Sequence[str]) -> list[str]:
    """``args`` with the value of a secret flag, or of what argparse could take for an
    abbreviation of one (``--client-sec``), shown as ``***``."""
    out: list[str] = []
    hide = False
    for arg in args:
        flag, eq, _ = arg.partition("=")
        if hide:
            out.append("***")
            hide = False
        elif _secret(flag):
            out.append(f"{flag}=***" if eq else arg)
            hide = not eq
        else:
            out.append(arg)
    return out
