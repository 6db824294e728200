"""Training online TSM in clip mode (``tsm-train``)."""
