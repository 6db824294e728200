"""Real-time gesture demo -- ``online_tsm.demo`` (the ``tsm-demo`` command).

``sources`` (camera on its own thread, video file, folder of frames, synthetic),
``model`` (which runtime to open), ``app`` (the loop), ``overlay`` (drawing),
``sinks`` (video, JSON-lines log, screenshot, console), ``window`` (OpenCV
window), ``web`` (the browser view and ``page.html``), ``stopping`` (SIGINT and
SIGTERM end a run cleanly), ``cli``.  The smoothing lives in
:mod:`online_tsm.streaming.smoothing`.
"""
