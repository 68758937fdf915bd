"""The parts of the ``concept-probe`` command (its entry point is :mod:`concept_probe.cli`).

``flags``: a bad command line (UsageError) and library messages rewritten in flags;
``parser``: the argparse definitions; ``models``: the model and its preprocessing;
``resume``: pre-flight checks and resuming; ``stages``: extract and fit;
``explain_eval``: the ``explain`` and ``evaluate`` commands.
"""
