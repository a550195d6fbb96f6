"""The service-order status vocabulary ("situacao"), shared by every part.

Tiny answers ``situacao`` as an int (``3``), a numeric string (``"3"``) or a
labelled string (``"3 - Finalizada"``); :func:`parse_situacao` accepts all three.
This is the only module the simulator shares with the rest of the package.
"""

from __future__ import annotations

import enum


class Situacao(enum.IntEnum):
    """Service-order statuses of Tiny API v3, by their numeric code."""

    EM_ABERTO = 0
    ORCADA = 1
    SERVICO_CONCLUIDO = 2
    FINALIZADA = 3
    NAO_APROVADA = 4
    APROVADA = 5
    EM_ANDAMENTO = 6
    CANCELADA = 7

    @property
    def label(self) -> str:
        """The Portuguese label Tiny shows, e.g. ``"Finalizada"``."""
        return LABELS[self]


LABELS: dict[Situacao, str] = {
    Situacao.EM_ABERTO: "Em Aberto",
    Situacao.ORCADA: "Orçada",
    Situacao.SERVICO_CONCLUIDO: "Serviço Concluído",
    Situacao.FINALIZADA: "Finalizada",
    Situacao.NAO_APROVADA: "Não Aprovada",
    Situacao.APROVADA: "Aprovada",
    Situacao.EM_ANDAMENTO: "Em Andamento",
    Situacao.CANCELADA: "Cancelada",
}

ALL_STATUSES: tuple[Situacao, ...] = tuple(Situacao)
#: code -> status: a dict lookup, where ``Situacao(code)`` costs microseconds per record.
_BY_CODE: dict[int, Situacao] = {int(s): s for s in Situacao}
#: Statuses an order usually leaves again; listed completely on every incremental cycle.
OPEN_STATUSES: tuple[Situacao, ...] = (
    Situacao.EM_ABERTO,
    Situacao.ORCADA,
    Situacao.SERVICO_CONCLUIDO,
    Situacao.APROVADA,
    Situacao.EM_ANDAMENTO,
)
#: Terminal statuses; listed over a recent window each cycle, swept fully less often.
CLOSED_STATUSES: tuple[Situacao, ...] = (
    Situacao.FINALIZADA,
    Situacao.NAO_APROVADA,
    Situacao.CANCELADA,
)


def parse_situacao(value: object) -> Situacao:
    """Return the status for ``3``, ``"3"`` or ``"3 - Finalizada"``.

    Raises :class:`ValueError` for anything else (``None``, ``"x"``, ``9``, ``True``).
    """
    if isinstance(value, bool):
        raise ValueError(f"situacao must be a number, got {value!r}")
    if isinstance(value, int):
        code = value
    elif isinstance(value, str):
        head = value.split("-", 1)[0].strip()
        if not head.isdigit():
            raise ValueError(f"unrecognised situacao {value!r}")
        code = int(head)
    else:
        raise ValueError(f"situacao must be an int or a string, got {type(value).__name__}")
    status = _BY_CODE.get(code)
    if status is None:
        raise ValueError(f"unknown situacao code {code}")
    return status


def format_situacao(status: Situacao, style: str) -> int | str:
    """Render a status the way the API does in ``style`` ``int``, ``str`` or ``label``."""
    if style == "int":
        return int(status)
    if style == "str":
        return str(int(status))
    if style == "label":
        return f"{int(status)} - {status.label}"
    raise ValueError(f"unknown situacao style {style!r}")
