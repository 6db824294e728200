"""``tsm-bench --import``: figures measured on a device (run.py's JSON, trtexec's times, LiteRT's benchmark_model log)."""
