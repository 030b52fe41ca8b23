"""Aloha: the Python client of the Aloha real-time events API (Zulip's events API).

::

    import sys
    import aloha

    client = aloha.Client(config_file="~/aloharc")  # [api] email, key, site
    client.send_message({"type": "stream", "to": "romeo@example.com", "topic": "posts",
                         "content": "But soft, what light"})
    client.call_on_each_message(lambda msg: sys.stdout.write(str(msg) + "\\n"))

``call_on_each_event`` and ``call_on_each_message`` long-poll until ``client.stop()`` is called
(from another thread or the callback), retrying failures with exponential backoff and full
jitter, and registering a new queue when the server has lost theirs. Standard library only.
"""

from aloha.client import DEFAULT_CONFIG_FILE, Client, __version__
from aloha.errors import AlohaError, BadEventQueueError, ConfigError, RetriesExhausted

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "AlohaError",
    "BadEventQueueError",
    "Client",
    "ConfigError",
    "RetriesExhausted",
    "__version__",
]
