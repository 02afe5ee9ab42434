"""FrozenLake corpus (task ``logic``): a solvable lake drawn with PIL; the edit draws the shortest safe route.

Rendered here from primitives (ice, holes, start figure, goal flag) rather than gym sprites, so the corpus
needs no download and the picture is the same on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from etchr_tools.data.maze import MOVES, Cell, bfs_path, draw_path, moves_of
from etchr_tools.data.samples import QuestionForm, Sample, int_range, mc_question, pick_form

ICE = (205, 232, 248)
ICE_EDGE = (160, 200, 228)
HOLE = (25, 45, 90)
START = (0, 150, 0)
GOAL = (230, 170, 0)
ROUTE = (220, 20, 20)
_STEP = {letter: delta for delta, letter in MOVES.items()}


@dataclass(frozen=True)
class FrozenLakeOptions:
    """``size``: side of the square lake (int or inclusive range); ``hole_prob``: chance a tile is a hole;
    ``random_endpoints``: S and G anywhere (default: S top-left, G bottom-right as in gym)."""

    size: int | Sequence[int] = (4, 8)
    hole_prob: float = 0.25
    random_endpoints: bool = False
    question_form: QuestionForm = "mixed"
    cell_px: int = 48
    max_tries: int = 1000

    def __post_init__(self) -> None:
        int_range(self.size, "size", low=2)
        if not 0.0 <= self.hole_prob < 1.0:
            raise ValueError(f"hole_prob must be in [0, 1), got {self.hole_prob}")
        if self.cell_px < 8 or self.max_tries < 1:
            raise ValueError("cell_px must be >= 8 and max_tries >= 1")


def simulate(lake: Sequence[str], moves: str) -> bool:
    """Whether ``moves`` walks from S to G, staying on the lake, never on H, and stopping at G."""
    cells = {(r, c): ch for r, row in enumerate(lake) for c, ch in enumerate(row)}
    pos = next(cell for cell, ch in cells.items() if ch == "S")
    for i, move in enumerate(moves):
        if move not in _STEP:
            return False
        pos = (pos[0] + _STEP[move][0], pos[1] + _STEP[move][1])
        if cells.get(pos, "H") == "H" or (cells[pos] == "G" and i != len(moves) - 1):
            return False
    return cells.get(pos) == "G"


def _lake(rng: random.Random, options: FrozenLakeOptions) -> tuple[list[str], list[Cell]]:
    side_range = int_range(options.size, "size", low=2)
    for _ in range(options.max_tries):
        side = rng.randint(*side_range)
        if options.random_endpoints:
            start, goal = rng.sample([(r, c) for r in range(side) for c in range(side)], 2)
        else:
            start, goal = (0, 0), (side - 1, side - 1)
        tiles = [["H" if rng.random() < options.hole_prob else "F" for _ in range(side)] for _ in range(side)]
        tiles[start[0]][start[1]], tiles[goal[0]][goal[1]] = "S", "G"
        path = bfs_path(side, side, lambda cell, t=tiles: t[cell[0]][cell[1]] != "H", start, goal)
        if path:
            return ["".join(row) for row in tiles], path
    raise ValueError(f"no solvable lake in {options.max_tries} tries; lower hole_prob ({options.hole_prob})")


def _render(lake: Sequence[str], px: int) -> Image.Image:
    side_h, side_w = len(lake), len(lake[0])
    image = Image.new("RGB", (side_w * px, side_h * px), ICE)
    draw = ImageDraw.Draw(image)
    for r, row in enumerate(lake):
        for c, ch in enumerate(row):
            x0, y0, x1, y1 = c * px, r * px, (c + 1) * px - 1, (r + 1) * px - 1
            draw.rectangle((x0, y0, x1, y1), fill=ICE, outline=ICE_EDGE, width=max(1, px // 24))
            draw.line((x0 + px // 5, y0 + px // 3, x0 + px // 2, y0 + px // 4), fill=ICE_EDGE, width=1)
            m = px // 8
            if ch == "H":
                draw.ellipse((x0 + m, y0 + m, x1 - m, y1 - m), fill=HOLE)
            elif ch == "S":  # a figure: head and body
                cx = (x0 + x1) // 2
                draw.ellipse((cx - px // 8, y0 + m, cx + px // 8, y0 + m + px // 4), fill=START)
                draw.rectangle((cx - px // 6, y0 + m + px // 4, cx + px // 6, y1 - m), fill=START)
            elif ch == "G":  # a flag: pole and pennant
                pole = x0 + px // 3
                draw.rectangle((pole, y0 + m, pole + max(1, px // 16), y1 - m), fill=(90, 60, 30))
                draw.polygon([(pole, y0 + m), (x1 - m, y0 + px // 4), (pole, y0 + px // 2)], fill=GOAL)
    return image


def _wrong_routes(rng: random.Random, lake: Sequence[str], moves: str, count: int) -> list[str]:
    """Distinct plausible routes that fail: one move changed, dropped or added, checked by simulation."""
    found: list[str] = []
    for _ in range(500):
        i = rng.randrange(len(moves))
        op = rng.randrange(3)
        letter = rng.choice("UDLR")
        if op == 0:
            cand = moves[:i] + letter + moves[i + 1 :]
        elif op == 1:
            cand = moves[:i] + moves[i + 1 :]
        else:
            cand = moves[:i] + letter + moves[i:]
        if cand and cand != moves and cand not in found and not simulate(lake, cand):
            found.append(cand)
            if len(found) == count:
                break
    return found


def generate(rng: random.Random, index: int, options: FrozenLakeOptions) -> Sample:
    """One FrozenLake row with a guaranteed route; the answer is a shortest move string."""
    lake, path = _lake(rng, options)
    moves = moves_of(path)
    image = _render(lake, options.cell_px)
    edited = draw_path(image, path, options.cell_px, ROUTE)
    meta = {"map": lake, "moves": moves}
    intro = (
        "The image shows a frozen lake: the green figure starts on the top-left tile, the flag marks "
        "the goal and dark circles are holes."
        if not options.random_endpoints
        else "The image shows a frozen lake: the green figure is the start, the flag is the goal and dark "
        "circles are holes."
    )
    form = pick_form(rng, options.question_form)
    wrong = _wrong_routes(rng, lake, moves, 3) if form == "mc" else []
    if form == "open" or len(wrong) < 3:
        question = (
            f"{intro} Moving one tile at a time, give the shortest sequence of moves (L/R/U/D) that reaches "
            "the goal without stepping into a hole. Answer with the move string, e.g. RRDD."
        )
        return Sample("logic", question, moves, "frozenlake", meta, image, edited)
    stem = f"{intro} Which sequence of moves (L/R/U/D) reaches the goal without stepping into a hole?"
    question, letter = mc_question(rng, stem, moves, wrong)
    return Sample("logic", question, letter, "option", meta, image, edited)
