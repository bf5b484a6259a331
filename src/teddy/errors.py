"""One exception type for bad input, so stage scripts can print one clear line."""


class TeddyError(Exception):
    """A problem with the user's input (config, dataset, checkpoint) or a diverged run."""
