"""Real-time gesture demo -- ``online_tsm.demo``."""
