"""vterm's load generator (``manage.py vterm_bench``): simulated users, the floor, the report.

- ``floor``: what bash and tmux alone take to answer ``true`` (no vterm in between).
- ``load``: sessions created and driven over REST and the WebSocket, latencies recorded.
- ``resources``: PSS and CPU of the processes that hold the sessions.
- ``report``: percentiles, the table, JSON and the histogram.
- ``runner``: one run end to end, against a given stack or one it starts itself.
"""
