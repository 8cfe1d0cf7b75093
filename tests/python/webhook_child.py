"""The child of test_webhooks.py::test_no_acknowledged_event_is_lost_to_kill_9: a receiver on
a LocalQueue file that serves until the parent SIGKILLs it.

    python webhook_child.py QUEUE_FILE SECRET

Prints the receiver's URL on one line once it listens.
"""

from __future__ import annotations

import sys
import threading

import isthmus


def main() -> None:
    path, secret = sys.argv[1], sys.argv[2]
    rx = isthmus.WebhookReceiver(routes={"/hooks/crash": {"scheme": "standard", "secret": secret}},
                                 queue=isthmus.LocalQueue(path), threads=2)
    rx.start()
    print(rx.url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
