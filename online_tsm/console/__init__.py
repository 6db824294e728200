"""What the tsm-* commands share: one-line errors, progress lines, message helpers and HOST:PORT addresses."""
