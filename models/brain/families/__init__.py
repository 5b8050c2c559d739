"""Subject families of the brain model: which components carry a subject's hidden valence.

One module per family, each a :class:`~models.brain.families.base.SubjectFamily` subclass
with ``name = "NAME"`` (defining it registers it); the protocol's side of the name is
``register_family`` in ``experiment_protocols/brain_model.py`` (docs/architecture.md
section 13).
"""
