"""What an evaluation shows, what it cannot show, and what to run next, in words.

A newcomer's first result is often the only one they read (issue 18: the demo said "+0.008 ... does not
measurably beat random init" and stopped there). ``outlook`` turns the headline of the flow-alignment protocol
(the trained network against random init of its own seed, and against pixel position alone, both paired) into
a few sentences for the report: the verdict, the limits of the run that produced it, and the next command;
with DAVIS, one more on which random init it beats (read the trained network's way, or at its own best layers)
and whether colour alone is still ahead.
Pure: it reads the protocols' result dicts and the checkpoint's training settings, nothing else.
"""

from __future__ import annotations

from typing import Any, Mapping

NEXT_LONGER = ("To train for longer on more video, run `cpfs run --preset cpu-hour` on your own videos "
               "(about half an hour on 2 CPU cores; README, \"Train on your own videos\"), or `--preset paper` on a GPU.")
SEMANTICS = ("This run cannot show whether the features transfer beyond motion (objects, classes): the linear probe "
             "ran on handwritten digits at smoke scale. For that, evaluate with `--davis` and `--davis-train` "
             "(DAVIS label propagation and the foreground probe) or `--imagefolder` (a labelled image set).")


def _beats(paired: Mapping[str, Any] | None) -> bool | None:
    """True when the CI is above 0, False when it is not, None when there is no comparison."""
    if not isinstance(paired, Mapping) or "ci_low" not in paired:
        return None
    return float(paired["ci_low"]) > 0


def outlook(protocols: Mapping[str, Mapping[str, Any]], train_config: Mapping[str, Any], *, smoke_scale: bool,
            model: str = "cpfs", step: int | None = None) -> list[str]:
    """Sentences saying what the evaluation of ``model`` shows and what to run next.

    Args:
        protocols: ``{protocol: {source: result}}`` as ``cpfs.evaluation.run`` returns them.
        train_config: the checkpoint's training settings (``preset``, ``steps``).
        smoke_scale: the linear probe ran on the embedded digits.
        step: the evaluated checkpoint's step, named when it is not the end of the schedule (a best
            validated checkpoint).
    """
    fa = protocols.get("flow_alignment", {}).get(model, {})
    random_ok, position_ok = _beats(fa.get("paired")), _beats(fa.get("paired_position"))
    preset, steps = train_config.get("preset", "?"), train_config.get("steps", "?")
    budget = f"the `{preset}` preset, {steps} steps"
    if step is not None and step != steps:
        budget = f"the `{preset}` preset, the checkpoint of step {step} of {steps}"
    out: list[str] = []
    if random_ok is None:
        out.append("No held-out flow alignment was measured, so this report says nothing about learning from motion.")
    elif random_ok and position_ok:
        out.append(f"Training worked ({budget}): on held-out video the trained network groups pixels by how they move "
                   "better than a random network of its own seed and better than pixel position alone.")
    elif random_ok:
        out.append(f"Training learned something ({budget}): the trained network beats a random network of its own seed "
                   "on held-out video, but not pixel position alone: nearby pixels move together, and the network "
                   "has not yet learned more than that.")
        out.append(NEXT_LONGER)
    else:
        out.append(f"This run does not show that training helped ({budget}): on held-out video the trained network is "
                   "not measurably better than a random network of its own seed. That is expected of a short run on "
                   "a few short videos; it is not a sign that the pipeline is broken.")
        out.append(NEXT_LONGER)
    davis = _davis_sentence(protocols.get("davis", {}), model)
    if davis:
        out.append(davis)
    if smoke_scale and "davis" not in protocols and "foreground" not in protocols:
        out.append(SEMANTICS)
    return out


def _davis_sentence(davis: Mapping[str, Any], model: str) -> str | None:
    """What DAVIS label propagation shows: against random init read at the trained network's features, against
    random init at its own best layers (``paired_random_layers``), and against colour alone; None without DAVIS."""
    res = davis.get(model, {})
    same, strict = _beats(res.get("paired")), _beats(res.get("paired_random_layers"))
    if same is None:
        return None
    if not same:
        text = "On DAVIS the trained network's features do not measurably beat random init's."
    elif strict is False:
        layers = "+".join(res["paired_random_layers"].get("random_layers") or ["its best layers"])
        text = ("On DAVIS the trained network's features beat random init read the same way, but not random init "
                f"read at its own best layers ({layers}): that gain comes from which features are compared, not from "
                "what training taught.")
    else:
        text = "On DAVIS the trained network's features beat random init" + (
            ", read the same way and at its own best layers." if strict else ".")
    trained = (res.get("summary") or {}).get("J&F", {}).get("mean")
    colour = ((davis.get("colour-lab") or {}).get("summary") or {}).get("J&F", {}).get("mean")
    if trained is not None and colour is not None and colour >= trained:
        text += (f" Colour alone still scores higher there (J&F {colour:.2f} against {trained:.2f}): the features do "
                 "not yet transfer to objects better than colour does.")
    return text
