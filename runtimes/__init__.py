"""Streaming runtimes over several backends -- ``online_tsm.runtimes``."""
