"""The lab: the zoo's task, its builder and trainer, the measured OPD ground truth, and the demo that shows it.

Nothing in the runtime imports this package; it imports the runtime.
"""
