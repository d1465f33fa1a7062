"""Errors that stop a night with a message meant for the person running it (no traceback needed)."""


class NightStopped(RuntimeError):
    """The night cannot go on (nothing accepted, too many rejections, no model...). Outputs written so far are kept."""
