"""What a ``--resume`` refusal names, read from the message's own part (``another set-up (FIELD: A in the file, B
now; ...)``) rather than from its closing advice, which names every option whatever differed."""

from __future__ import annotations

import re

_PART = re.compile(r"was written by another set-up \((?P<what>.*)\); resuming would mix", re.DOTALL)
_FIELD = re.compile(r"(?P<field>[\w.]+): (?P<before>.+?) in the file, (?P<now>.+?) now$", re.DOTALL)


def refused_fields(message: str) -> dict[str, tuple[str, str]]:
    """Field -> (the file's value, this run's value), as the refusal spells them; fails if ``message`` is no
    such refusal."""
    part = _PART.search(message)
    assert part is not None, f"not a refusal naming what differs: {message}"
    found = {}
    for entry in part.group("what").split("; "):
        match = _FIELD.match(entry.strip())
        assert match is not None, f"cannot read {entry!r} in: {message}"
        found[match.group("field")] = (match.group("before"), match.group("now"))
    return found
