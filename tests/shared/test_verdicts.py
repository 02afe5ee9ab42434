"""The one verdict reader, on replies worded the way real judges word them.

Each row is a judge reply (as Qwen2.5/3-VL, InternVL, GPT-4o, Gemini or a thinking model — QwQ, Qwen3
thinking, DeepSeek-R1 — words it), the cause it means, and whether the backend cut it at max_tokens.
"""

from __future__ import annotations

import dataclasses

import pytest

from etchr.verdicts import CAUSES, Verdict, read_verdict

# (reply, cause it means, cut at max_tokens)
REPLIES: list[tuple[str, str, bool]] = [
    # --- the four replies from issue 15, once all read as "reliable"
    ("No, there is no red box in image 1.", "no", False),
    ("0. The image shows 1 red box, but it does not surround the cup.", "no", False),
    ("0 (the drawn path crosses a wall in step 1)", "no", False),
    ("0\n\nThe second image has 2 boxes and only 1 of them is near the glove.", "no", False),
    # --- bare verdicts (InternVL, Qwen2.5-VL at T = 0, the authors' R_corr "only output 1 or 0")
    ("1", "yes", False),
    ("0", "no", False),
    ("1\n", "yes", False),
    ("Yes", "yes", False),
    ("No.", "no", False),
    ("YES", "yes", False),
    ("no", "no", False),
    ("True", "yes", False),
    ("false.", "no", False),
    ("Yes!", "yes", False),
    # --- verdict first, then an explanation full of numbers (GPT-4o, Gemini, InternVL)
    ("1. The red box tightly encloses the blue mug, and its handle is visible.", "yes", False),
    (
        "Yes, the red box is around the cat on the left, which is the animal the question asks about.",
        "yes",
        False,
    ),
    ("No. The red box marks the dog instead of the cat.", "no", False),
    ("0 — the red box surrounds the lamp, but the question asks about the vase.", "no", False),
    ("No — the restored puzzle still has the top-left and bottom-right patches swapped.", "no", False),
    ("**0**\n\nThe red box is drawn around the dog, while the question asks about the cat.", "no", False),
    ("**1**\n\nThe second image boxes the third bar (2019), and its value of 42 is readable.", "yes", False),
    (
        "1 - the path goes from S at row 0, column 0 to G at row 3, column 3 through open cells only.",
        "yes",
        False,
    ),
    ("Yes: all 4 patches are back in place and 0 patches are duplicated.", "yes", False),
    ("0\n\nStep 1 moves right, but step 2 goes diagonally through the hole at (1, 1).", "no", False),
    (
        "1\n\nThe red box accurately encloses the traffic light, making its color clearly visible.",
        "yes",
        False,
    ),
    ("False. The box frames option 1 in the legend, not the 2021 bar the question is about.", "no", False),
    # --- reasoning first, then a conclusion (Qwen2.5-VL, GPT-4o, DeepSeek-R1 after </think>)
    (
        "The second image correctly highlights the cup with a red bounding box. Therefore, the answer is 1.",
        "yes",
        False,
    ),
    ("The red box in the second image is around the laptop, not the cup. So the answer is 0", "no", False),
    (
        "In the second image, the path starts at the green square (row 0, column 0) and reaches the goal "
        "without crossing any walls.\n\nTherefore: 1",
        "yes",
        False,
    ),
    ("Image 1 is the original; image 2 boxes the kettle.\n\nVerdict: 0", "no", False),
    ("The restored image shows all 9 pieces in a coherent layout.\n\nFinal answer: yes", "yes", False),
    ("The box in Figure 1 encloses the mug, which the question asks about.\n\n**Answer:** 1", "yes", False),
    (
        "**Verdict: 1**\n\n**Reasoning:** The edited image highlights the two people the question counts.",
        "yes",
        False,
    ),
    (
        "Answer: 0\nExplanation: The path drawn in image 2 goes diagonally between step 3 and step 4.",
        "no",
        False,
    ),
    ("Based on the images, the answer is **1**.", "yes", False),
    ("The new view shows the chair behind the table from the left side, as asked. I'd say 1.", "yes", False),
    ("There are 0 red boxes in the second image.\n\n0", "no", False),
    ("The box marks the mug fully. Therefore, the edit is reliable: 1.", "yes", False),
    ("### Verdict\n**0**\n\nThe box frames the wrong bar.", "no", False),
    ("The answer is 1 if the box encloses the cup. It does not, so 0.", "no", False),
    ("1. The red box is drawn.\n2. It surrounds the cup.\n\nAnswer: 1", "yes", False),
    # --- \boxed{} (Qwen3-VL and the authors' EVR judge convention), LaTeX, quotes, code
    ("\\boxed{1}", "yes", False),
    ("$\\boxed{0}$", "no", False),
    ("\\boxed{\\text{yes}}", "yes", False),
    ("\\boxed{\\textbf{No}}", "no", False),
    (
        "The edited image draws a red box around the small sign; its text is readable.\n\n\\boxed{1}",
        "yes",
        False,
    ),
    (
        "The helper view shows pieces 1, 3 and 4 in place, but piece 2 is duplicated.\n\n\\boxed{0}",
        "no",
        False,
    ),
    (
        "Box 1 covers the cup and box 2 covers the saucer, so both needed objects are marked: $\\boxed{1}$",
        "yes",
        False,
    ),
    ("\\[\n\\boxed{0}\n\\]", "no", False),
    ("'1'", "yes", False),
    ('"yes"', "yes", False),
    ("`0`", "no", False),
    ("```\n1\n```", "yes", False),
    ("“No.”", "no", False),
    # --- thinking models: closed blocks, a bare </think>, blocks never closed
    (
        "<think>\nOkay, the user wants to know whether the second image helps. In image 1 there is a maze; "
        "in image 2 a red line goes from the start. Step 1 goes right, step 2 goes down and passes through "
        "a wall at row 2. So the answer should be 0.\n</think>\n\n\\boxed{0}",
        "no",
        False,
    ),
    (
        "<think>\nThe box in image 2 surrounds the dog, which is the referent. Yes.\n</think>\n\n"
        "**Final Answer**\n\\boxed{1}",
        "yes",
        False,
    ),
    (
        "Okay, let me check image 1 and image 2. Option 1 is the red mug... the box covers it. So 1.\n"
        "</think>\n\nThe red box encloses the mug the question asks about.\n\n\\boxed{1}",
        "yes",
        False,
    ),
    (
        "<think>\nThe path crosses a hole in step 3. The answer is 0.\n</think>\n\n"
        "The path in the second image passes through a hole at row 2, column 1, so it is not a valid "
        "solution.\n\n**Answer:** 0",
        "no",
        False,
    ),
    ("<think></think>\n\nYes, the chart's 2019 bar is boxed and readable.", "yes", False),
    ("<think>It could be 1, but the box in step 1 looks off.</think>\n\nNo", "no", False),
    ("<think>the answer is 1</think>", "none", False),  # only reasoning, no reply
    (
        "<think>\nOkay, let me look at the first image. There are 3 cups on the table. In the second image a "
        "red box is drawn around the one on the left. Wait, the question asks about the cup nearest to the",
        "truncated",
        True,
    ),
    ("<think>\nImage 1 shows the scene; step 1: find the chair. The answer is 1", "none", False),
    # --- cut at max_tokens: a verdict stated before the cut still counts
    ("0. The drawn path in the second image starts at the entrance but then", "no", True),
    ("\\boxed{1}\n\nThe red box encloses the cup and the saucer, and the", "yes", True),
    ("The second image shows a red box around the", "truncated", True),
    # --- a digit in a noun phrase is never a verdict
    ("1 red box surrounds the cup.", "none", False),
    ("The image shows option 1 and Figure 1.", "none", False),
    ("There is 1 box around the glove and 0 boxes around the cup.", "none", False),
    ("Row 0 and column 1 are marked; step 1 goes right.", "none", False),
    ("0 red boxes are visible in the edited image.", "none", False),
    ("No red box is drawn around the cup.", "none", False),
    ("The answer is 0.5 of the bar's height.", "none", False),
    ("1. The red box is drawn.\n2. It surrounds the cup.", "none", False),  # a numbered list, no verdict
    # --- hedges
    ("yes or no", "hedge", False),
    ("1/0", "hedge", False),
    ("I cannot tell from these images.", "hedge", False),
    ("It is unclear whether the red box fully surrounds the cup.", "hedge", False),
    ("I can't determine whether the path is valid at this resolution.", "hedge", False),
    ("The answer could be 1 or 0 depending on whether the handle counts as part of the cup.", "hedge", False),
    ("Yes and no: the box covers the cup but also half of the plate.", "hedge", False),
    ("\\boxed{1 \\text{ or } 0}", "hedge", False),
    ("It's hard to say; the image is blurry. It might be 1.", "hedge", False),
    ("I'm not sure, so I'd say 0.", "hedge", False),
    ("I don't know", "hedge", False),
    # --- leading and concluding verdicts that disagree
    ("Yes, the red box is there. However it frames the plate, so the answer is 0.", "disagree", False),
    ("0\n\nOn closer inspection, the box does enclose the cup.\n\n\\boxed{1}", "disagree", False),
    ("Answer: 1\n\nOn reflection the box misses the handle, so the answer is 0.", "disagree", False),
    ("No, the box is not around the mug. Final answer: yes", "disagree", False),
    # --- no verdict at all
    ("The second image shows the scene from the left.", "none", False),
    ("maybe", "none", False),
    ("2", "none", False),
    ("10", "none", False),
    ("", "none", False),
]


def _id(row: tuple[str, str, bool]) -> str:
    text, cause, cut = row
    return f"{cause}{'-cut' if cut else ''}:{text[:40]}"


def test_the_table_is_big_and_covers_every_cause() -> None:
    assert len(REPLIES) >= 60
    assert {cause for _, cause, _ in REPLIES} == set(CAUSES)
    assert len({text for text, _, _ in REPLIES}) == len(REPLIES), "every reply once"


@pytest.mark.parametrize(("text", "cause", "cut"), REPLIES, ids=[_id(row) for row in REPLIES])
def test_reads_what_the_judge_meant(text: str, cause: str, cut: bool) -> None:
    verdict = read_verdict(text, truncated=cut)
    assert verdict.cause == cause
    assert verdict.value is {"yes": True, "no": False}.get(cause)
    assert verdict.reliable is (cause == "yes")


def test_truncated_is_only_the_cause_when_the_reply_was_cut() -> None:
    text = "<think>\nLooking at image 1, then image 2, the box"
    assert read_verdict(text).cause == "none"
    assert read_verdict(text, truncated=True).cause == "truncated"
    # a cut reply that hedged never reached its verdict: the budget is to blame, not the judge
    assert read_verdict("It is unclear at first whether the box", truncated=True).cause == "truncated"


def test_verdict_is_a_frozen_value() -> None:
    verdict = read_verdict("Yes.")
    assert verdict == Verdict(True, "yes")
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.value = False  # type: ignore[misc]
