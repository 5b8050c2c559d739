"""How long a protocol keeps the participant in the chair, from its own blocks and timings.

The figure a lab books a session by: a protocol is sized (calibration trials, closed-loop
rounds) against it, and the loop bench quotes its gains at the minutes they cost.
"""

from __future__ import annotations

from experiment_protocols.schema import Protocol

#: seconds a person takes to answer one rating scale (a 9-point Self-Assessment-Manikin
#: slider or key press: about 1.5-3 s per scale; the upper half is taken)
RATING_S_PER_SCALE = 2.5
#: seconds of each rest break and of the instructions screen
REST_S = 45.0
INSTRUCTIONS_S = 60.0


def participant_minutes(protocol: Protocol, closed_loop_rounds: int | None = None) -> float:
    """Expected participant time of ``protocol``, in minutes.

    ``closed_loop_rounds`` (after round 0) replaces the closed-loop block's own count. Every
    trial lasts its mean fixation, stimulus and inter-trial interval, and a rated one
    :data:`RATING_S_PER_SCALE` per scale; the rest breaks fall every
    ``rest_every_n_trials`` trials. Generation never adds time: the next round is asked
    for before the current one ends.
    """
    pres = protocol.presentation
    t = pres.timing
    trial_s = t.fixation_s + t.stimulus_s + t.iti_s
    rating_s = RATING_S_PER_SCALE * len(pres.ratings.scales) if pres.ratings.enabled else 0.0
    seconds, trials = INSTRUCTIONS_S, 0
    for block in pres.blocks:
        rounds = block.n_rounds
        if block.kind == "closed_loop" and closed_loop_rounds is not None:
            rounds = closed_loop_rounds + 1
        n = block.trials_per_round * rounds
        rated = block.kind in pres.ratings.blocks
        seconds += n * (trial_s + (rating_s if rated else 0.0))
        trials += n
    if pres.rest_every_n_trials:
        seconds += (trials // pres.rest_every_n_trials) * REST_S
    return round(seconds / 60.0, 1)
