"""Maze corpus (task ``logic``): a perfect maze, a green start, a red goal; the edit draws the path in blue.

Grid size and shortest-path length are options, so the study of edit correctness vs path length (the
paper's Fig. 2(b)) can be built as one corpus per length range.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from PIL import Image, ImageDraw

from etchr_tools.data.samples import QuestionForm, Sample, int_range, mc_question, pick_form

Cell = tuple[int, int]
MOVES: dict[Cell, str] = {(-1, 0): "U", (1, 0): "D", (0, -1): "L", (0, 1): "R"}

WALL = (20, 20, 20)
FLOOR = (255, 255, 255)
START = (0, 170, 0)
GOAL = (220, 0, 0)
PATH = (0, 70, 255)


@dataclass(frozen=True)
class MazeOptions:
    """Maze corpus options (docs/data.md).

    ``rows``/``cols``: grid size, an int or inclusive range (even values round up to odd: a perfect maze has
    its walls on even lines); ``min_path``/``max_path``: shortest-path length in moves; ``openings``: share of
    inner walls knocked out after carving (0 = exactly one route); ``max_tries``: mazes drawn before giving
    up on a path-length range.
    """

    rows: int | Sequence[int] = (9, 15)
    cols: int | Sequence[int] = (9, 15)
    min_path: int = 1
    max_path: int | None = None
    openings: float = 0.0
    question_form: QuestionForm = "mixed"
    cell_px: int = 16
    max_tries: int = 200

    def __post_init__(self) -> None:
        int_range(self.rows, "rows", low=3)
        int_range(self.cols, "cols", low=3)
        if self.min_path < 1 or (self.max_path is not None and self.max_path < self.min_path):
            raise ValueError(f"need 1 <= min_path <= max_path, got {self.min_path}..{self.max_path}")
        if not 0.0 <= self.openings <= 1.0:
            raise ValueError(f"openings must be in [0, 1], got {self.openings}")
        if self.cell_px < 4 or self.max_tries < 1:
            raise ValueError("cell_px must be >= 4 and max_tries >= 1")


def bfs_path(
    height: int, width: int, passable: Callable[[Cell], bool], start: Cell, goal: Cell
) -> list[Cell]:
    """A shortest 4-connected path start→goal (both included), or [] when there is none."""
    parents: dict[Cell, Cell | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            path = [cell]
            while (parent := parents[path[-1]]) is not None:
                path.append(parent)
            return path[::-1]
        for dr, dc in MOVES:
            nxt = (cell[0] + dr, cell[1] + dc)
            if 0 <= nxt[0] < height and 0 <= nxt[1] < width and nxt not in parents and passable(nxt):
                parents[nxt] = cell
                queue.append(nxt)
    return []


def distances(height: int, width: int, passable: Callable[[Cell], bool], start: Cell) -> dict[Cell, int]:
    """BFS distance from start to every reachable cell."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        for dr, dc in MOVES:
            nxt = (cell[0] + dr, cell[1] + dc)
            if 0 <= nxt[0] < height and 0 <= nxt[1] < width and nxt not in dist and passable(nxt):
                dist[nxt] = dist[cell] + 1
                queue.append(nxt)
    return dist


def moves_of(path: Sequence[Cell]) -> str:
    """The U/D/L/R string walking a cell path."""
    return "".join(MOVES[(b[0] - a[0], b[1] - a[1])] for a, b in pairwise(path))


def carve(rng: random.Random, rows: int, cols: int, openings: float) -> list[list[int]]:
    """A perfect maze by randomized DFS on the odd cells (1 = wall), then a share of inner walls removed."""
    grid = [[1] * cols for _ in range(rows)]
    start = (1 + 2 * rng.randrange((rows - 1) // 2), 1 + 2 * rng.randrange((cols - 1) // 2))
    grid[start[0]][start[1]] = 0
    stack = [start]
    while stack:
        r, c = stack[-1]
        steps = [(dr, dc) for dr, dc in ((-2, 0), (2, 0), (0, -2), (0, 2))]
        rng.shuffle(steps)
        for dr, dc in steps:
            nr, nc = r + dr, c + dc
            if 0 < nr < rows - 1 and 0 < nc < cols - 1 and grid[nr][nc] == 1:
                grid[r + dr // 2][c + dc // 2] = 0
                grid[nr][nc] = 0
                stack.append((nr, nc))
                break
        else:
            stack.pop()
    if openings > 0:
        # walls between two open cells in a line: removing one adds a loop, never an isolated pocket
        inner = [
            (r, c)
            for r in range(1, rows - 1)
            for c in range(1, cols - 1)
            if grid[r][c] == 1 and ((r % 2 == 1 and c % 2 == 0) or (r % 2 == 0 and c % 2 == 1))
        ]
        for r, c in rng.sample(inner, round(openings * len(inner))):
            grid[r][c] = 0
    return grid


def _odd(value: int) -> int:
    return value if value % 2 else value + 1


def _draw_maze(grid: list[list[int]], start: Cell, goal: Cell, px: int) -> Image.Image:
    image = Image.new("RGB", (len(grid[0]) * px, len(grid) * px), FLOOR)
    draw = ImageDraw.Draw(image)
    for r, row in enumerate(grid):
        for c, wall in enumerate(row):
            if wall:
                draw.rectangle((c * px, r * px, (c + 1) * px - 1, (r + 1) * px - 1), fill=WALL)
    _mark(draw, start, goal, px)
    return image


def _mark(draw: ImageDraw.ImageDraw, start: Cell, goal: Cell, px: int) -> None:
    inset = max(1, px // 8)
    for (r, c), color in ((start, START), (goal, GOAL)):
        draw.rectangle(
            (c * px + inset, r * px + inset, (c + 1) * px - 1 - inset, (r + 1) * px - 1 - inset), fill=color
        )


def draw_path(image: Image.Image, path: Sequence[Cell], px: int, color: tuple[int, int, int]) -> Image.Image:
    """A copy of ``image`` with a thick polyline through the centres of ``path``'s cells."""
    edited = image.copy()
    draw = ImageDraw.Draw(edited)
    centres = [(c * px + px // 2, r * px + px // 2) for r, c in path]
    width = max(2, px // 3)
    draw.line(centres, fill=color, width=width, joint="curve")
    for x, y in centres:
        draw.ellipse((x - width // 2, y - width // 2, x + width // 2, y + width // 2), fill=color)
    return edited


def _mc_lengths(rng: random.Random, length: int) -> list[str]:
    """Three distinct wrong positive lengths near the right one (same parity would be too easy to spot)."""
    pool = sorted({length + d for d in (-6, -4, -3, -2, -1, 1, 2, 3, 4, 6) if length + d >= 1})
    return [str(v) for v in rng.sample(pool, 3)]


def generate(rng: random.Random, index: int, options: MazeOptions) -> Sample:
    """One maze row: resample mazes and endpoints until the shortest path length is in range."""
    lo, hi = options.min_path, options.max_path if options.max_path is not None else 10**9
    rows_range, cols_range = int_range(options.rows, "rows", low=3), int_range(options.cols, "cols", low=3)
    for _ in range(options.max_tries):
        rows, cols = _odd(rng.randint(*rows_range)), _odd(rng.randint(*cols_range))
        grid = carve(rng, rows, cols, options.openings)
        open_cells = [(r, c) for r in range(rows) for c in range(cols) if grid[r][c] == 0]
        start = rng.choice(open_cells)
        dist = distances(rows, cols, lambda cell, g=grid: g[cell[0]][cell[1]] == 0, start)
        goals = [cell for cell in open_cells if lo <= dist.get(cell, -1) <= hi]
        if goals:
            goal = rng.choice(goals)
            break
    else:
        raise ValueError(
            f"no maze with a shortest path of {lo}..{options.max_path} moves in {options.max_tries} tries "
            f"(rows {options.rows}, cols {options.cols}); widen the range or the grid"
        )
    path = bfs_path(rows, cols, lambda cell: grid[cell[0]][cell[1]] == 0, start, goal)
    image = _draw_maze(grid, start, goal, options.cell_px)
    edited = draw_path(image, path, options.cell_px, PATH)
    _mark(ImageDraw.Draw(edited), start, goal, options.cell_px)
    meta = {"grid": grid, "start": list(start), "goal": list(goal), "path": [list(cell) for cell in path]}
    intro = (
        "The image shows a maze: black cells are walls, white cells are open, "
        "the green cell is the start and the red cell the goal."
    )
    if pick_form(rng, options.question_form) == "open":
        question = (
            f"{intro} Moving one cell at a time up, down, left or right, what is the shortest sequence of "
            "moves (U/D/L/R) from the green start to the red goal? Answer with the move string, e.g. RRDL."
        )
        return Sample("logic", question, moves_of(path), "path", meta, image, edited)
    length = len(path) - 1
    stem = f"{intro} How many steps is the shortest path from the green start to the red goal?"
    question, letter = mc_question(rng, stem, str(length), _mc_lengths(rng, length))
    return Sample("logic", question, letter, "option", meta, image, edited)
