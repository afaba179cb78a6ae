"""The report's sentences on what an evaluation shows and what to run next, for each outcome."""

from __future__ import annotations

from cpfs.evaluation.outlook import NEXT_LONGER, SEMANTICS, outlook

DEMO = {"preset": "demo", "steps": 400}


def _protocols(random_low: float, position_low: float) -> dict:
    paired = {"mean": random_low + 0.02, "ci_low": random_low, "ci_high": random_low + 0.04}
    against_position = {"mean": position_low + 0.02, "ci_low": position_low, "ci_high": position_low + 0.04}
    return {"flow_alignment": {"cpfs": {"paired": paired, "paired_position": against_position}}, "linear_probe": {}}


def test_a_null_result_says_so_and_gives_the_next_step() -> None:
    text = outlook(_protocols(-0.02, -0.05), DEMO, smoke_scale=True)
    assert "does not show that training helped (the `demo` preset, 400 steps)" in text[0]
    assert NEXT_LONGER in text and SEMANTICS in text


def test_a_positive_result_says_what_it_shows_and_what_it_cannot() -> None:
    text = outlook(_protocols(0.01, 0.003), {"preset": "cpu-hour", "steps": 2500}, smoke_scale=True)
    assert text[0].startswith("Training worked (the `cpu-hour` preset, 2500 steps)")
    assert NEXT_LONGER not in text and SEMANTICS in text
    best = outlook(_protocols(0.01, 0.003), {"preset": "cpu-hour", "steps": 2500}, smoke_scale=True, step=500)
    assert best[0].startswith("Training worked (the `cpu-hour` preset, the checkpoint of step 500 of 2500)")


def test_beating_random_but_not_position_is_named() -> None:
    text = outlook(_protocols(0.01, -0.01), DEMO, smoke_scale=True)
    assert "but not pixel position alone" in text[0] and NEXT_LONGER in text


def test_semantic_protocols_replace_the_smoke_scale_warning() -> None:
    protocols = {**_protocols(0.01, 0.003), "davis": {}}
    assert SEMANTICS not in outlook(protocols, DEMO, smoke_scale=True)
    assert outlook({}, DEMO, smoke_scale=False)[0].startswith("No held-out flow alignment")


def _davis(same_low: float, strict_low: float | None, trained: float = 0.68, colour: float = 0.71) -> dict:
    cpfs = {"paired": {"mean": same_low + 0.02, "ci_low": same_low, "ci_high": same_low + 0.04},
            "summary": {"J&F": {"mean": trained}}}
    if strict_low is not None:
        cpfs["paired_random_layers"] = {"mean": strict_low + 0.02, "ci_low": strict_low, "ci_high": strict_low + 0.04,
                                        "random_layers": ["conv1", "conv2"]}
    return {**_protocols(0.01, 0.003), "davis": {"cpfs": cpfs, "colour-lab": {"summary": {"J&F": {"mean": colour}}}}}


def test_davis_says_which_random_init_it_beats_and_whether_colour_is_ahead() -> None:
    # Beats random init read the same way, not at its own best layers, and colour is ahead: all three said.
    text = outlook(_davis(0.15, -0.03), DEMO, smoke_scale=True)[-1]
    assert text.startswith("On DAVIS the trained network's features beat random init read the same way, but not "
                           "random init read at its own best layers (conv1+conv2)")
    assert "Colour alone still scores higher there (J&F 0.71 against 0.68)" in text
    # Beats both, and colour is behind: no caveat.
    text = outlook(_davis(0.15, 0.02, trained=0.75), DEMO, smoke_scale=True)[-1]
    assert text == "On DAVIS the trained network's features beat random init, read the same way and at its own best layers."
    # Without the stricter row (off): the plain sentence; not even random init read the same way: said so.
    assert outlook(_davis(0.15, None, trained=0.75), DEMO, smoke_scale=True)[-1] == (
        "On DAVIS the trained network's features beat random init.")
    assert outlook(_davis(-0.02, None, trained=0.75), DEMO, smoke_scale=True)[-1] == (
        "On DAVIS the trained network's features do not measurably beat random init's.")
    assert not any(t.startswith("On DAVIS") for t in outlook(_protocols(0.01, 0.003), DEMO, smoke_scale=True))
