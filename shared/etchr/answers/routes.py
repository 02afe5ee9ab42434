"""Grid routes (FrozenLake and mazes): a predicted route is checked against the board, with its own BFS.

With a board in ``meta`` any valid route to the goal is correct (the shortest one when ``require_shortest``);
without one, the predicted moves must equal the expected moves.
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from types import MappingProxyType
from typing import Any

from etchr.answers.extraction import route_candidate
from etchr.answers.scorers import Match, Scorer

__all__ = ["match_route"]


_Cell = tuple[int, int]
_MOVES: Mapping[str, _Cell] = MappingProxyType(
    {"l": (0, -1), "r": (0, 1), "u": (-1, 0), "d": (1, 0), "left": (0, -1), "right": (0, 1)}
    | {"up": (-1, 0), "down": (1, 0)}
)
_ARROWS: Mapping[str, _Cell] = MappingProxyType(
    {
        "←": (0, -1),
        "→": (0, 1),
        "↑": (-1, 0),
        "↓": (1, 0),
        "⬅": (0, -1),
        "➡": (0, 1),
        "⬆": (-1, 0),
        "⬇": (1, 0),
    }
)
_FILLER_WORDS = (
    "move moves go then and step steps finally first next path is the answer to sequence action actions "
    "direction directions solution route"
)
_FILLER = frozenset(_FILLER_WORDS.split())
_ROUTE_TOKEN = re.compile(
    r"(?P<word>[a-z]+)|(?P<arrow>[←→↑↓⬅➡⬆⬇])|(?P<sep>[\s,;|/\\\-–—>=.:()\[\]{}'\"`*\ufe0f+])"
)
_COORD = re.compile(r"[(\[]\s*(-?\d+)\s*,\s*(-?\d+)\s*[)\]]")


@dataclass(frozen=True)
class _Board:
    height: int
    width: int
    blocked: frozenset[_Cell]
    start: _Cell
    goal: _Cell

    def inside(self, cell: _Cell) -> bool:
        return 0 <= cell[0] < self.height and 0 <= cell[1] < self.width

    def shortest(self) -> int | None:
        """Length in moves of a shortest start→goal route (BFS), or ``None`` when none exists."""
        seen, queue = {self.start: 0}, deque([self.start])
        while queue:
            cell = queue.popleft()
            if cell == self.goal:
                return seen[cell]
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                nxt = (cell[0] + dr, cell[1] + dc)
                if self.inside(nxt) and nxt not in self.blocked and nxt not in seen:
                    seen[nxt] = seen[cell] + 1
                    queue.append(nxt)
        return None


def _parse_moves(text: str) -> list[_Cell] | None:
    """Moves in letter, word or arrow form with any separators; ``None`` if anything else is in the text.

    Arrows count as moves only when no letter or word moves are present ("R → D" uses → as a separator).
    """
    letters: list[_Cell] = []
    arrows: list[_Cell] = []
    text = unicodedata.normalize("NFC", text).lower()
    pos = 0
    while pos < len(text):
        token = _ROUTE_TOKEN.match(text, pos)
        if token is None:
            return None
        pos = token.end()
        word = token.group("word")
        if word is not None:
            if word in _MOVES:
                letters.append(_MOVES[word])
            elif set(word) <= set("lrud"):
                letters.extend(_MOVES[ch] for ch in word)
            elif word not in _FILLER:
                return None
        elif token.group("arrow") is not None:
            arrows.append(_ARROWS[token.group("arrow")])
    return (letters or arrows) or None


def _parse_route(text: str) -> tuple[str, list[_Cell]] | None:
    """("cells", [(r, c), …]) for a coordinate list, ("moves", [(dr, dc), …]) for moves, else ``None``."""
    cells = [(int(r), int(c)) for r, c in _COORD.findall(text)]
    if cells:
        return "cells", cells
    moves = _parse_moves(text)
    return ("moves", moves) if moves else None


def _route_is_valid(board: _Board, route: tuple[str, list[_Cell]], require_shortest: bool) -> bool:
    kind, items = route
    if kind == "moves":
        cells = [board.start]
        for dr, dc in items:
            cells.append((cells[-1][0] + dr, cells[-1][1] + dc))
    else:
        cells = items if items[0] == board.start else [board.start, *items]
    if len(cells) < 2:
        return False
    for index, (prev, cell) in enumerate(pairwise(cells), start=1):
        if abs(prev[0] - cell[0]) + abs(prev[1] - cell[1]) != 1:
            return False
        if not board.inside(cell) or cell in board.blocked:
            return False
        if cell == board.goal and index != len(cells) - 1:
            return False  # reaching the goal ends the episode: further moves make the answer wrong
    if cells[-1] != board.goal:
        return False
    return not require_shortest or len(cells) - 1 == board.shortest()


def _cell(value: Any, name: str) -> _Cell:
    if not isinstance(value, list | tuple) or len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"meta {name!r} must be [row, col], got {value!r}")
    return int(value[0]), int(value[1])


def _rows(raw: Any, name: str) -> list[list[str]]:
    if isinstance(raw, str):
        raw = [row for row in re.split(r"[\s/,;]+", raw.strip()) if row]
    if not isinstance(raw, list | tuple) or not raw:
        raise ValueError(f"meta {name!r} must be a non-empty list of rows")
    rows = [
        list(row) if isinstance(row, str) else [str(int(v)) if isinstance(v, bool) else str(v) for v in row]
        for row in raw
    ]
    if any(len(row) != len(rows[0]) for row in rows) or not rows[0]:
        raise ValueError(f"meta {name!r} rows must be non-empty and of equal length")
    return rows


def _frozenlake_board(meta: Mapping[str, Any]) -> _Board:
    rows = [[ch.upper() for ch in row] for row in _rows(meta["map"], "map")]
    cells = {(r, c): ch for r, row in enumerate(rows) for c, ch in enumerate(row)}
    if set(cells.values()) - set("SFHG"):
        raise ValueError("meta 'map' may only hold S, F, H and G")
    starts = [cell for cell, ch in cells.items() if ch == "S"]
    goals = [cell for cell, ch in cells.items() if ch == "G"]
    if len(starts) != 1 or len(goals) != 1:
        raise ValueError("meta 'map' needs exactly one S and one G")
    blocked = frozenset(cell for cell, ch in cells.items() if ch == "H")
    return _Board(len(rows), len(rows[0]), blocked, starts[0], goals[0])


def _maze_board(meta: Mapping[str, Any]) -> _Board:
    rows = _rows(meta["grid"], "grid")
    if any(ch not in ("0", "1", "#", ".") for row in rows for ch in row):
        raise ValueError("meta 'grid' cells must be 0 (open) or 1 (wall)")
    blocked = frozenset((r, c) for r, row in enumerate(rows) for c, ch in enumerate(row) if ch in ("1", "#"))
    board = _Board(
        len(rows), len(rows[0]), blocked, _cell(meta.get("start"), "start"), _cell(meta.get("goal"), "goal")
    )
    for name, cell in (("start", board.start), ("goal", board.goal)):
        if not board.inside(cell) or cell in board.blocked:
            raise ValueError(f"meta {name!r} {list(cell)} is outside the grid or on a wall")
    return board


def match_route(
    text: str, predicted: str, source: str, expected: str, meta: Mapping[str, Any] | None, scorer: Scorer
) -> Match:
    rule = scorer.value
    meta = meta or {}
    has_board = "map" in meta if scorer is Scorer.FROZENLAKE else "grid" in meta
    board = None
    if has_board:
        board = _frozenlake_board(meta) if scorer is Scorer.FROZENLAKE else _maze_board(meta)
    predicted = route_candidate(text, predicted, source, _parse_route)
    route = _parse_route(predicted)
    if board is not None:
        valid = route is not None and _route_is_valid(board, route, bool(meta.get("require_shortest")))
        return Match(valid, rule, predicted, expected)
    gold = _parse_route(expected)
    if gold is None:
        raise ValueError(
            f"{rule}: no {'map' if scorer is Scorer.FROZENLAKE else 'grid'} in meta and the "
            f"expected answer {expected!r} is not a move sequence"
        )
    return Match(route == gold, f"{rule}_moves", predicted, expected)
