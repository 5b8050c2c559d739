"""Self-report after a stimulus: valence and arousal on Self-Assessment-Manikin-style scales.

Each scale is a PsychoPy ``Slider`` answered with the mouse, a number key, or a press
of a response box on LSL (:mod:`app.presentation.responses`). The rating screen is
drawn frame by frame through the runner's flip, so frame timing, key control and
texture upload carry on while the participant answers. The runner puts a
``rating_onset`` marker on the flip that first shows each question (``onset``) and a
``rating`` marker with the answers after the last one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from experiment_protocols.presentation import Ratings

if TYPE_CHECKING:
    from app.presentation.responses import ResponseBox

_QUESTIONS = {
    "valence": "How did the picture make you feel?",
    "arousal": "How calm or excited did you feel?",
}


class RatingScreen:
    """One slider per scale, shown one after the other."""

    def __init__(self, win: Any, cfg: Ratings, text_color: str) -> None:
        from psychopy import visual

        self.cfg = cfg
        ticks = list(range(cfg.low, cfg.high + 1))
        self.keys = [str(t) for t in ticks] if cfg.low >= 0 and cfg.high <= 9 else []
        self._sliders = {}
        self._questions = {}
        for scale in cfg.scales:
            low_label, high_label = getattr(cfg, f"{scale}_labels")
            labels = [str(t) for t in ticks]
            labels[0] = f"{labels[0]}\n{low_label}"
            labels[-1] = f"{labels[-1]}\n{high_label}"
            self._sliders[scale] = visual.Slider(
                win,
                ticks=ticks,
                labels=labels,
                granularity=1,
                style="rating",
                size=(1.0, 0.04),
                pos=(0, -0.1),
                units="height",
                labelHeight=0.03,
                labelColor=text_color,
                lineColor=text_color,
                markerColor="red",
            )
            self._questions[scale] = visual.TextStim(
                win,
                text=_QUESTIONS[scale],
                pos=(0, 0.12),
                height=0.045,
                units="height",
                color=text_color,
                wrapWidth=1.4,
            )

    def warm_up(self) -> None:
        """Draw every element once so the first real rating frame is not slow."""
        for scale in self.cfg.scales:
            self._sliders[scale].draw()
            self._questions[scale].draw()

    def box_value(self, key: str) -> int | None:
        """A response-box key as a point of the scale (a whole number from low to high)."""
        try:
            value = int(key)
        except ValueError:
            return None
        return value if self.cfg.low <= value <= self.cfg.high else None

    def run(
        self,
        frame: Callable[[str, Callable[[], None]], tuple[int, float]],
        pressed: Callable[[], list[str]],
        *,
        onset: Callable[[str], None] | None = None,
        box: ResponseBox | None = None,
        where: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Ask every scale; returns ``{scale: value or None, "rt_ms": ..., "input": ...}``.

        ``frame(phase, draw)`` draws and flips one frame and returns (index, LSL time);
        ``pressed()`` lists the number keys pressed at that frame; ``onset(scale)`` is
        called just before the flip that first shows a question (its marker goes out on
        that flip). ``box`` adds a response box: a press stamped at or after the
        question's flip answers it, with the reaction time from its own timestamp.
        ``"input"`` names what answered each scale: "keyboard", "mouse",
        "response_box" or None (timed out).
        """
        out: dict[str, Any] = {"rt_ms": {}, "input": {}}
        where = where or {}
        for scale in self.cfg.scales:
            slider, question = self._sliders[scale], self._questions[scale]
            slider.reset()

            def draw(slider=slider, question=question) -> None:
                question.draw()
                slider.draw()

            if box is not None:
                box.discard(where)  # pressed before this question: not an answer to it
            if onset is not None:
                onset(scale)
            _, t0 = frame("rating", draw)
            value, t, source, rt = None, t0, None, None
            while True:
                _, t = frame("rating", draw)
                keys = [k for k in pressed() if k in self.keys]
                if keys:
                    value, source = int(keys[-1]), "keyboard"
                    break
                if box is not None:
                    value, rt = self._from_box(box, t0, scale, where)
                    if value is not None:
                        source = "response_box"
                        break
                rating = slider.getRating()
                if rating is not None:
                    value, source = int(round(rating)), "mouse"
                    break
                if self.cfg.timeout_s and t - t0 >= self.cfg.timeout_s:
                    break
            if value is not None and rt is None:
                rt = (t - t0) * 1e3
            out[scale] = value
            out["rt_ms"][scale] = None if rt is None else round(rt, 1)
            out["input"][scale] = source
        return out

    def _from_box(
        self, box: ResponseBox, t0: float, scale: str, where: dict[str, Any]
    ) -> tuple[int | None, float | None]:
        """The first valid press for this question, if any: (value, reaction time in ms).

        Presses before it that are no answer (another key, or stamped before the
        question appeared) are logged as ``response_ignored``.
        """
        while (press := box.next_press()) is not None:
            key, t_press = press
            value = self.box_value(key)
            if value is None:
                reason = f"not a point of the {self.cfg.low}-{self.cfg.high} scale"
            elif t_press < t0:
                reason = "pressed before the question appeared"
            else:
                return value, (t_press - t0) * 1e3
            box.log("response_ignored", key=key, t_lsl=t_press, reason=reason, scale=scale, **where)
        return None, None
