"""The participant's screen: the PsychoPy trial runner of ``eegs present`` and its parts.

``runner`` (blocks, trials, one flip at a time), ``frames`` (flip times and CPU per
frame), ``markers`` (JSON markers on the flip), ``images`` (folders and the generator,
decoded off the frame loop), ``textures`` (upload in strips during blank frames),
``photodiode`` (the corner patch and the timing check's analysis), ``ratings``,
``controls`` (experimenter keys, status line), ``display`` (window, clocks, Xvfb),
``timing_check``. Modules that need PsychoPy import it inside functions, so importing
this package stays cheap.
"""
