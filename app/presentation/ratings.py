"""Self-report after a stimulus: valence and arousal on Self-Assessment-Manikin-style scales.

Each scale is a PsychoPy ``Slider`` answered with the mouse or a number key. The
rating screen is drawn frame by frame through the runner's flip, so frame timing,
key control and texture upload carry on while the participant answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from experiment_protocols.presentation import Ratings

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

    def run(
        self,
        frame: Callable[[str, Callable[[], None]], tuple[int, float]],
        pressed: Callable[[], list[str]],
    ) -> dict[str, Any]:
        """Ask every scale; returns ``{scale: value or None, "rt_ms": {scale: ms}}``.

        ``frame(phase, draw)`` draws and flips one frame and returns (index, LSL time);
        ``pressed()`` lists the number keys pressed at that frame.
        """
        out: dict[str, Any] = {"rt_ms": {}}
        for scale in self.cfg.scales:
            slider, question = self._sliders[scale], self._questions[scale]
            slider.reset()

            def draw(slider=slider, question=question) -> None:
                question.draw()
                slider.draw()

            _, t0 = frame("rating", draw)
            value, t = None, t0
            while True:
                _, t = frame("rating", draw)
                keys = [k for k in pressed() if k in self.keys]
                if keys:
                    value = int(keys[-1])
                    break
                rating = slider.getRating()
                if rating is not None:
                    value = int(round(rating))
                    break
                if self.cfg.timeout_s and t - t0 >= self.cfg.timeout_s:
                    break
            out[scale] = value
            out["rt_ms"][scale] = None if value is None else round((t - t0) * 1e3, 1)
        return out
