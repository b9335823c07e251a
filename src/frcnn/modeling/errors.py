"""The error a detector raises when it is built from parts that cannot work together."""


class IncompatibleParts(ValueError):
    """The detector's collaborators do not fit together: anchors for 5 feature levels on a backbone
    with 1, a C4 head on a backbone without conv5, a one-class RPN detector on three-class data.
    Raised at construction, before any training step; ``frcnn.app.build`` adds the config groups."""
