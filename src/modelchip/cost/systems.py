"""Which system a chip is deployed in when the user names only the chip."""

from __future__ import annotations

from modelchip.errors import unknown
from modelchip.spec.chips import Chip, System, systems

DEFAULT_SYSTEM = {
    "h800": "hgx-h800", "h20": "hgx-h20", "a800": "hgx-a800", "h100": "hgx-h100", "gb200": "gb200-nvl72",
    "gb300": "gb300-nvl72",
    "ascend-910b": "atlas-800-a2", "ascend-910c": "cloudmatrix-384", "metax-c550": "metax-supernode",
}


def system_for(chip: Chip, system_id: str | None = None) -> System | None:
    """The named system, else the chip's usual one, else None (an 8-chip scale-up domain is assumed)."""
    table = systems()
    if system_id:
        if system_id not in table:
            raise unknown("system", system_id, table)
        return table[system_id]
    sid = DEFAULT_SYSTEM.get(chip.id)
    return table.get(sid) if sid else None
