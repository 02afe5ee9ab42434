"""The one answer matcher: extraction order, option letters, numbers and every scorer, both sides."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from etchr.answers import (
    Match,
    Scorer,
    explicit_final_answer,
    extract_final_answer,
    extract_option_letter,
    match_answer,
    normalize_answer,
    parse_number,
)

# ------------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # boxed: last one wins, nested braces kept, \fbox too, LaTeX wrappers unwrapped
        (r"so \boxed{3} ... wait, actually \boxed{4}.", "4"),
        (r"\boxed{\frac{1}{2}}", "1/2"),
        (r"\boxed{x^{2}+{y}}", "x^{2}+{y}"),
        (r"\boxed{\text{(B)}}", "(B)"),
        (r"Answer: A. Final: \fbox{C}", "C"),
        (r"$\boxed{12\%}$", "12%"),
        (r"\boxed{1{,}234}", "1,234"),
        (r"\boxed{} then \boxed{ 7 }", "7"),
        (r"\boxed{unclosed", r"\boxed{unclosed"),
        # boxed beats an answer line; think blocks are dropped first
        ("<think>\\boxed{A}</think>Answer: B", "B"),
        ("Answer: A\n\\boxed{D}", "D"),
        # explicit answer lines: the last one, text after the last marker
        ("Answer: (C)", "(C)"),
        ("Answer: A\nOn reflection...\nFinal answer: B.", "B"),
        ("The answer is 42.", "42"),
        ("**Final Answer:** **Paris**", "Paris"),
        ("the correct answer is: `left`", "left"),
        ("## Final Answer\n\nThe red mug.", "The red mug"),
        ("Answer:\n```\nR R D D\n```", "R R D D"),
        ("答案：B", "B"),
        # lone option-letter line beats the last line
        ("Looking at the image.\nThe ball is red.\n(B)\nBecause it is on the left.", "(B)"),
        ("Let me think.\nThe cup is bigger.\nC", "C"),
        ("Step 1...\nStep 2...\nB.", "B"),
        # last non-empty line
        ("first line\n\nThere are 7 apples.\n\n", "There are 7 apples"),
        ("`yes`", "yes"),
        ("", ""),
        ("   \n  ", ""),
        ("<think>only reasoning</think>", ""),
    ],
)
def test_extract_final_answer(text: str, expected: str) -> None:
    assert extract_final_answer(text) == expected


# ----------------------------------------------------------------------------------------- option letters


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("b", "B"),
        ("[C].", "C"),
        ("**D**", "D"),
        ("B) red", "B"),
        ("(B) red ball", "B"),
        ("C. The cup", "C"),
        ("Option B", "B"),
        ("the correct option is (C)", "C"),
        ("answer is B.", "B"),
        ("The answer is A because the ball is red.", "A"),  # after "is", a capital A is the option
        ("Answer: A. Hmm, no. Final answer: B", "B"),  # explicit keyword: the last one wins
        ("I think B", "B"),  # "I" is not a choice
        ("the answer is b.", "B"),  # a lower-case letter after a keyword only when nothing follows it
        ("the answer is a dog", None),
        ("A is correct.", "A"),  # an article never precedes "is"
        ("(A) cat. The answer is (B).", "B"),  # a leading label bracketing another letter is no answer
        ("So it must be B because it is larger", "B"),
        ("<think>A</think>C", "C"),
        # false friends: a sentence-initial "A" before a lower-case word is the article
        ("A cat is sitting on the mat.", None),
        ("A cat is sitting on the mat, so B.", "B"),
        ("A cat is sitting on the mat. The answer is B.", "B"),
        ("Answer: A cat", None),
        ("(A) cat", "A"),
        ("A) cat", "A"),
        # none or ambiguous
        ("A or B", None),
        ("(A) and (C)", None),
        ("Paris", None),
        ("", None),
        ("The Eiffel Tower", None),
        ("E", None),  # outside the choices given below
    ],
)
def test_extract_option_letter(text: str, expected: str | None) -> None:
    assert extract_option_letter(text, choices="ABCD") == expected


def test_extract_option_letter_default_choices_reach_h() -> None:
    assert extract_option_letter("(H)") == "H"
    assert extract_option_letter("(I)") is None


# ------------------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", 42.0),
        ("1,234.5", 1234.5),
        ("12%", 12.0),
        ("12 percent", 12.0),
        ("-3", -3.0),
        ("−3", -3.0),
        ("+7", 7.0),
        ("$4.50", 4.5),
        ("-$4.50", -4.5),
        ("€1,000", 1000.0),
        ("3/4", 0.75),
        ("-1/2", -0.5),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("**12.5**", 12.5),
        ("$5$", 5.0),
        # not numbers
        ("3 cats", None),
        ("12,34", None),
        ("1/0", None),
        ("-$-4", None),
        ("2019-2020", None),
        ("", None),
        ("abc", None),
        ("1e999", None),
    ],
)
def test_parse_number(text: str, expected: float | None) -> None:
    assert parse_number(text) == expected


# -------------------------------------------------------------------------------------------- matching


def _check(prediction: str, expected: str, correct: bool | None, rule: str, **kwargs: Any) -> Match:
    result = match_answer(prediction, expected, **kwargs)
    assert (result.correct, result.rule) == (correct, rule), result
    return result


@pytest.mark.parametrize(
    ("prediction", "expected", "correct"),
    [
        ("B", "B", True),
        ("The answer is (B).", "B", True),
        ("Answer: (C)", "(C)", True),
        ("(B) red ball", "(B) red ball", True),
        ("<think>maybe A</think>\nB", "B", True),
        ("Reasoning...\nSo the correct choice is B, the mug.\n\nHope this helps!", "B", True),
        ("A", "B", False),
        ("A cat is on the mat.", "A", False),  # the article is no option
        ("A or B", "A", False),
        ("no idea", "C", False),
    ],
)
def test_option(prediction: str, expected: str, correct: bool) -> None:
    _check(prediction, expected, correct, "option", scorer="option")


def test_option_text_quoted() -> None:
    meta = {"choices": {"A": "blue ball", "B": "red ball", "C": "Vitamin C"}}
    _check("The red ball.", "B", True, "option_text", scorer="option", meta=meta)
    _check("blue ball", "B", False, "option_text", scorer="option", meta=meta)
    _check("Vitamin C", "C", True, "option_text", scorer="option", meta=meta)
    # the gold may be the option text itself; a letter in the prediction is then compared to its letter
    _check("B", "red ball", True, "option", scorer="option", meta=meta)
    _check("A", "red ball", False, "option", scorer="option", meta=meta)
    # without choices the text after the expected letter stands in for the option text
    _check("red ball", "(B) red ball", True, "option_text", scorer="option")
    # a list of choices is lettered from A
    _check("green", "B", True, "option_text", scorer="option", meta={"choices": ["red", "green"]})


def test_option_without_a_gold_letter_falls_back_to_exact() -> None:
    _check("red ball", "red ball", True, "exact", scorer="option")


@pytest.mark.parametrize(
    ("prediction", "expected", "correct"),
    [
        ("105", "100", True),  # the 5 % boundary is inclusive
        ("95", "100", True),
        ("105.01", "100", False),
        ("94.99", "100", False),
        ("-104", "-100", True),
        ("-106", "-100", False),
        ("12%", "12", True),  # a percent may mean the number itself ...
        ("50%", "0.5", True),  # ... or a fraction
        ("0.12", "12%", True),
        ("1%", "100", False),
        ("1,234", "1234.5", True),
        ("about 42 apples", "42", True),
        ("3/4", "0.75", True),
        ("three", "3", True),
        ("2 or 3", "3", False),  # two different numbers: no single value to judge
        ("many", "3", False),
        ("0", "0", True),  # zero gold: exact
        ("0.001", "0", False),
        ("The value is 0.0.", "0", True),
    ],
)
def test_numeric_relaxed(prediction: str, expected: str, correct: bool) -> None:
    _check(prediction, expected, correct, "numeric", scorer="numeric")


def test_numeric_tolerance_is_configurable() -> None:
    _check("101", "100", False, "numeric", scorer="numeric", rel_tol=0.0)
    _check("109", "100", True, "numeric", scorer="numeric", rel_tol=0.1)
    with pytest.raises(ValueError, match="rel_tol"):
        match_answer("1", "1", scorer="numeric", rel_tol=-0.1)


def test_row_sets_numeric_tolerance_in_meta() -> None:
    """A benchmark graded on exact values (CharXiv descriptive) carries ``meta.rel_tol = 0``."""
    exact = {"rel_tol": 0}
    assert match_answer("0.21", "0.2", meta=exact).correct is False
    assert match_answer("0.20", "0.2", meta=exact).correct is True  # same value, other spelling
    assert match_answer("0.21", "0.2").correct is True  # default: ChartQA's 5 %
    assert match_answer("0.21", "0.2", meta=exact, rel_tol=0.1).correct is True  # the argument wins
    for bad in ("5%", True, -1, float("nan")):
        with pytest.raises(ValueError, match="rel_tol"):
            match_answer("1", "1", meta={"rel_tol": bad})


@pytest.mark.parametrize(
    ("prediction", "expected", "correct", "rule"),
    [
        ("2019", "2019", True, "year"),
        ("In 2019.", "2019", True, "year"),
        ("2020", "2019", False, "year"),  # within 5 % but years are exact
        ("1999", "2000", False, "year"),
        ("950", "1000", False, "year"),
        ("2150", "2200", True, "numeric"),  # outside 1000-2100: relaxed
        ("1,010", "1,000", True, "numeric"),  # a thousands comma makes it a quantity
    ],
)
def test_years_are_exact(prediction: str, expected: str, correct: bool, rule: str) -> None:
    _check(prediction, expected, correct, rule, scorer="numeric")


def test_numeric_with_non_numeric_gold_falls_back_to_exact() -> None:
    _check("Paris", "paris", True, "exact", scorer="numeric")


@pytest.mark.parametrize(
    ("prediction", "expected", "correct", "rule"),
    [
        ("The Eiffel Tower.", "eiffel tower", True, "exact"),
        ("  Red   MUG! ", "red mug", True, "exact"),
        ("an apple", "Apple", True, "exact"),
        ("new-york", "New York", True, "exact"),
        ("True", "yes", True, "yes_no"),
        ("false", "No", True, "yes_no"),
        ("Yes, the mug is left of the laptop.", "yes", True, "yes_no"),
        ("No.", "yes", False, "yes_no"),
        ("-3", "3", False, "exact"),  # a sign before a digit survives normalisation
        ("3.5", "35", False, "exact"),
        ("red", "blue", False, "exact"),
        ("not sure", "yes", False, "exact"),
    ],
)
def test_exact(prediction: str, expected: str, correct: bool, rule: str) -> None:
    _check(prediction, expected, correct, rule, scorer="exact")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Quick, brown fox!", "quick brown fox"),
        ("TRUE", "yes"),
        ("1,000.5 m", "1,000.5 m"),
        ("-3", "-3"),
        ("**a**", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# ------------------------------------------------------------------------------------------- frozenlake

LAKE = {"map": ["SFFF", "FHFH", "FFFH", "HFFG"]}  # the classic 4x4 lake


@pytest.mark.parametrize(
    ("prediction", "correct"),
    [
        ("R R D D D R", True),
        ("Answer: RRDDDR", True),
        ("D, D, R, D, R, R", True),
        (r"\boxed{right, right, down, down, down, right}", True),
        ("Move down, then down, then right, down, right, right.", True),
        ("↓ ↓ → ↓ → →", True),
        ("R -> R -> D -> D -> D -> R", True),
        ("Moves:\nR\nR\nD\nD\nD\nR", True),  # one move per line
        ("D R", False),  # steps into the hole at (1, 1)
        ("U", False),  # leaves the grid
        ("L D D", False),  # leaves the grid
        ("R R D", False),  # does not reach G
        ("R R D D D R L", False),  # moves after reaching G
        ("R R D D D R R", False),  # would leave the grid after G too
        ("go to the goal", False),  # no moves
        ("1. R 2. R", False),  # digits are not moves
    ],
)
def test_frozenlake(prediction: str, correct: bool) -> None:
    _check(prediction, "R R D D D R", correct, "frozenlake", scorer="frozenlake", meta=LAKE)


def test_frozenlake_accepts_any_valid_route_and_coordinates() -> None:
    # a different valid route than the expected one is still correct
    _check("D D R D R R", "RRDDDR", True, "frozenlake", scorer="frozenlake", meta=LAKE)
    _check(
        "(0,0) (1,0) (2,0) (2,1) (3,1) (3,2) (3,3)", "", True, "frozenlake", scorer="frozenlake", meta=LAKE
    )
    _check("[1,0], [2,0], [2,1], [3,1], [3,2], [3,3]", "", True, "frozenlake", scorer="frozenlake", meta=LAKE)
    _check("(1,0) (2,0) (3,0)", "", False, "frozenlake", scorer="frozenlake", meta=LAKE)  # hole at (3, 0)


def test_frozenlake_shortest_when_required() -> None:
    meta = {"map": ["SFF", "FFF", "FFG"], "require_shortest": True}
    _check("R R D D", "", True, "frozenlake", scorer="frozenlake", meta=meta)
    _check("D R R D ... wait: R D R L R D", "", False, "frozenlake", scorer="frozenlake", meta=meta)
    _check("D D R U R D", "", False, "frozenlake", scorer="frozenlake", meta=meta)
    _check("D D R U R D", "", True, "frozenlake", scorer="frozenlake", meta={"map": meta["map"]})


def test_frozenlake_without_a_map_compares_moves() -> None:
    _check("right, right, down", "R R D", True, "frozenlake_moves", scorer="frozenlake")
    _check("R D R", "R R D", False, "frozenlake_moves", scorer="frozenlake")
    with pytest.raises(ValueError, match="not a move sequence"):
        match_answer("R", "", scorer="frozenlake")


@pytest.mark.parametrize(
    "meta",
    [
        {"map": ["SFF", "FFF"]},  # no G
        {"map": ["SFG", "SFF"]},  # two S
        {"map": ["SFX", "FFG"]},  # unknown cell
        {"map": ["SF", "FFG"]},  # ragged
        {"map": []},
    ],
)
def test_frozenlake_bad_map_raises(meta: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        match_answer("R", "R", scorer="frozenlake", meta=meta)


def test_frozenlake_map_as_string_or_lists() -> None:
    for raw in ("SF\nFG", "SF/FG", [["S", "F"], ["F", "G"]], ["sf", "fg"]):
        _check("R D", "", True, "frozenlake", scorer="frozenlake", meta={"map": raw})


# ------------------------------------------------------------------------------------------------- jigsaw

JIGSAW = {"rows": 2, "cols": 2}


@pytest.mark.parametrize(
    ("prediction", "correct"),
    [
        ("[2, 0, 1, 3]", True),
        ("2 0 1 3", True),
        ("(2,0,1,3)", True),
        ("[[2, 0], [1, 3]]", True),
        ("Answer: 2013", True),
        ("The order is:\n2 0\n1 3", True),
        ("[0, 2, 1, 3]", False),
        ("[2, 0, 1]", False),
        ("[3, 1, 2, 4]", False),  # 1-based is a different answer
        ("no idea", False),
    ],
)
def test_jigsaw(prediction: str, correct: bool) -> None:
    _check(prediction, "[2, 0, 1, 3]", correct, "jigsaw", scorer="jigsaw", meta=JIGSAW)


def test_jigsaw_gold_from_meta_and_bad_gold() -> None:
    meta = {"rows": 1, "cols": 3, "permutation": [1, 2, 0]}
    _check("1 2 0", "see meta", True, "jigsaw", scorer="jigsaw", meta=meta)
    with pytest.raises(ValueError, match="not a permutation"):
        match_answer("0 1 2", "[0, 0, 1]", scorer="jigsaw", meta={"rows": 1, "cols": 3})
    with pytest.raises(ValueError, match="not a permutation"):
        match_answer("0 1 2", "[0, 1, 2]", scorer="jigsaw", meta={"rows": 2, "cols": 2})
    with pytest.raises(ValueError, match="integers"):
        match_answer("0 1 2", "[0, 1, 2]", scorer="jigsaw", meta={"rows": 2})


# ---------------------------------------------------------------------------------------------------- path

MAZE = {
    "grid": [
        [0, 1, 0, 0],
        [0, 1, 0, 1],
        [0, 0, 0, 0],
        [1, 1, 1, 0],
    ],
    "start": [0, 0],
    "goal": [3, 3],
}


@pytest.mark.parametrize(
    ("prediction", "correct"),
    [
        ("D D R R R D", True),
        ("down, down, right, right, right, down", True),
        ("(0,0) -> (1,0) -> (2,0) -> (2,1) -> (2,2) -> (2,3) -> (3,3)", True),
        ("[(1, 0), (2, 0), (2, 1), (2, 2), (2, 3), (3, 3)]", True),  # start omitted
        ("D D R R U U R ... no: D D R R R D", False),  # unparseable words
        ("D D R R U U D D R D", True),  # a detour is fine: optimality not required
        ("R D D R R D", False),  # through the wall at (0, 1)
        ("(0,0) (2,0) (2,1) (2,2) (2,3) (3,3)", False),  # (0,0) -> (2,0) is not adjacent
        ("(0,0) (1,0) (1,0) (2,0)", False),  # staying put is not a move
        ("D D R R R", False),  # ends at (2, 3), not the goal
        ("(0,0) (1,0) (2,0) (2,1) (2,2) (2,3)", False),  # wrong end
        ("L", False),  # off the grid
    ],
)
def test_path(prediction: str, correct: bool) -> None:
    _check(prediction, "", correct, "path", scorer="path", meta=MAZE)


def test_path_shortest_when_required() -> None:
    meta = {**MAZE, "require_shortest": True}
    _check("D D R R R D", "", True, "path", scorer="path", meta=meta)
    _check("D D R R U U D D R D", "", False, "path", scorer="path", meta=meta)


def test_path_grid_as_strings_and_fallback_without_grid() -> None:
    meta = {"grid": ["0100", "0101", "0000", "1110"], "start": [0, 0], "goal": [3, 3]}
    _check("DDRRRD", "", True, "path", scorer="path", meta=meta)
    _check("D D R R R D", "DDRRRD", True, "path_moves", scorer="path")
    _check("D D R R D R", "DDRRRD", False, "path_moves", scorer="path")


@pytest.mark.parametrize(
    "meta",
    [
        {**MAZE, "start": [0, 1]},  # on a wall
        {**MAZE, "goal": [4, 4]},  # outside
        {**MAZE, "start": "0,0"},
        {"grid": [[0, 2]], "start": [0, 0], "goal": [0, 1]},
        {"grid": [[0, 0], [0]], "start": [0, 0], "goal": [0, 1]},
    ],
)
def test_path_bad_meta_raises(meta: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        match_answer("R", "", scorer="path", meta=meta)


# ---------------------------------------------------------------------------------------- judge and auto


def test_judge_returns_none() -> None:
    result = _check(
        "The mug is to the left of the laptop.", "left of the laptop", None, "judge", scorer="judge"
    )
    assert result.predicted == "The mug is to the left of the laptop"


@pytest.mark.parametrize("scorer", list(Scorer))
def test_empty_prediction_is_wrong_for_every_scorer(scorer: Scorer) -> None:
    meta = {"rows": 2, "cols": 2} if scorer is Scorer.JIGSAW else None
    _check("<think>cut off", "[0, 1, 2, 3]" if meta else "B", False, "empty", scorer=scorer, meta=meta)


@pytest.mark.parametrize(
    ("prediction", "expected", "meta", "correct", "rule"),
    [
        ("The answer is B.", "B", None, True, "option"),
        ("(C)", "(c)", None, True, "option"),
        ("red ball", "(B) red ball", None, True, "option_text"),
        ("A cat is on the mat.", "A", None, False, "option"),
        ("B", "red ball", {"choices": {"A": "blue ball", "B": "red ball"}}, True, "option"),
        ("about 103", "100", None, True, "numeric"),
        ("$4.40", "4.50", None, True, "numeric"),
        ("1998", "1999", None, False, "year"),
        ("Paris.", "paris", None, True, "exact"),
        ("Yes", "yes", None, True, "yes_no"),
        ("London", "Paris", None, False, "exact"),  # short answer: the rules decide
        ("It is left of the laptop", "on the left side of the laptop", None, None, "open"),
        ("on the left side of the laptop", "On the left side of the laptop.", None, True, "exact"),
        ("R R D D D R", "RRDDDR", LAKE, True, "frozenlake"),
        ("D D R R R D", "", MAZE, True, "path"),
        ("2 0 1 3", "[2, 0, 1, 3]", JIGSAW, True, "jigsaw"),
    ],
)
def test_auto_routing(
    prediction: str, expected: str, meta: dict[str, Any] | None, correct: bool | None, rule: str
) -> None:
    _check(prediction, expected, correct, rule, scorer="auto", meta=meta)


def test_scorer_names_and_defaults() -> None:
    assert match_answer("B", "B").rule == "option"  # auto by default
    assert match_answer("B", "B", scorer=None).rule == "option"
    assert match_answer("B", "B", scorer=Scorer.OPTION).correct is True
    assert match_answer("B", "B", scorer=" Option ").correct is True
    assert {s.value for s in Scorer} == {
        "option",
        "numeric",
        "exact",
        "frozenlake",
        "jigsaw",
        "path",
        "judge",
        "auto",
    }
    with pytest.raises(ValueError, match="unknown scorer"):
        match_answer("B", "B", scorer="regex")
    with pytest.raises(ValueError, match="empty"):
        match_answer("B", "  ")


def test_match_is_frozen_and_reports_what_was_read() -> None:
    result = match_answer("<think>hmm</think>Final answer: **42**.", " 42 ")
    assert result == Match(True, "numeric", "42", "42")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.correct = False  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The path turns right twice, so the exit is B.\n\n\\boxed{B}\n\nTo double-check, the", "B"),
        ("Counting the bars: 2019 is the tallest.\n**Final answer:** 2019\n\nLet me also verify", "2019"),
        ("Let me look at the first image. The maze starts at the top left and the path goes", None),
        ("<think>The second image shows the box around the cup, so the answer is", None),
        ("(B)", None),  # a lone letter is only the last line: in a cut reply it is wherever the cut fell
    ],
)
def test_explicit_final_answer_is_what_a_cut_reply_still_counts_for(text: str, expected: str | None) -> None:
    assert explicit_final_answer(text) == expected
