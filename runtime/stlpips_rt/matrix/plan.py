"""What a distance matrix costs and how it is cut: feature bytes per image, in memory or spilled to disk, blocks
of the head and the groups of blocks it works in, panels of rows held in memory."""

from __future__ import annotations

from dataclasses import dataclass

from .head import BLOCK, GROUP, K_CHUNK, tasks


def group_work_bytes(side: int) -> int:
    """float64 temporaries of a group of ``side`` images a side in flight (head.run_tasks): a converted chunk of
    its rows and of its columns, and the Gram products of its blocks."""
    return 2 * side * K_CHUNK * 8 + side * side * 8


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


@dataclass(frozen=True)
class MatrixPlan:
    rows: int
    cols: int | None  # None: rows x rows, each unordered pair once
    bytes_per_image: int
    max_memory: int
    threads: int = 1
    block: int = BLOCK

    @property
    def images(self) -> int:
        return self.rows + (self.cols or 0)

    @property
    def feature_bytes(self) -> int:
        return self.images * self.bytes_per_image

    @property
    def spilled(self) -> bool:
        """Features past half the budget go to disk (np.memmap); the other half is the head's."""
        return self.feature_bytes > self.max_memory // 2

    @property
    def group(self) -> int:
        """Images a side of the head's unit of work: up to GROUP, a multiple of the block, its rows, columns and
        work within half the budget."""
        b, room = self.block, self.max_memory // 2
        side = max(b, GROUP // b * b)
        while side > b and group_work_bytes(side) + 2 * side * self.bytes_per_image > room:
            side -= b
        return side

    @property
    def panel_rows(self) -> int:
        """Rows of features held in memory at once while the head runs (a multiple of the group)."""
        g = self.group
        room = self.max_memory // 2 - (group_work_bytes(g) + g * self.bytes_per_image)
        rows = max(g, room // max(1, self.bytes_per_image) // g * g)
        return min(rows, -(-self.rows // g) * g)

    @property
    def pairs(self) -> int:
        return self.rows * (self.rows - 1) // 2 if self.cols is None else self.rows * self.cols

    @property
    def blocks(self) -> int:
        return len(tasks(self.rows, self.cols, self.block))

    @property
    def passes(self) -> int:
        return -(-self.rows // self.panel_rows)

    def __str__(self) -> str:
        shape = f"{self.rows:,} x {self.rows:,}" if self.cols is None else f"{self.rows:,} x {self.cols:,}"
        where = (f"spilled to disk (np.memmap; over half of max_memory {_bytes(self.max_memory)}), the head holding "
                 f"{self.panel_rows:,} rows in memory at a time ({self.passes} pass(es) over the columns)"
                 if self.spilled else f"in memory (max_memory {_bytes(self.max_memory)})")
        out = self.rows * (self.cols or self.rows) * 4
        return (f"{shape} matrix, {self.pairs:,} pairs: features {self.bytes_per_image:,} bytes per image, "
                f"{_bytes(self.feature_bytes)} for {self.images:,} images, {where}; head in {self.blocks:,} blocks of "
                f"up to {self.block}x{self.block}, worked in groups of up to {self.group}x{self.group} on "
                f"{self.threads} thread(s) with {_bytes(group_work_bytes(self.group))} of float64 work; output "
                f"{_bytes(out)} float32")
