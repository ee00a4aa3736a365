"""Progress of a long run (pairs, frames, matrix rows) on stderr: tqdm's bar with rate and ETA, on a terminal only."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """A progress bar for ``total`` items of ``unit``, drawn only when stderr is a terminal and ``enabled``, and
    only once the run has taken a second (short runs stay quiet). ``update(done)`` takes the running count."""

    def __init__(self, total: int, enabled: bool, unit: str = "pairs") -> None:
        self._bar = tqdm(total=total if total > 0 else None, unit=f" {unit}", file=sys.stderr,
                         disable=not (enabled and sys.stderr.isatty()), delay=1.0, dynamic_ncols=True,
                         mininterval=0.2, leave=True)

    def update(self, done: int) -> None:
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()
