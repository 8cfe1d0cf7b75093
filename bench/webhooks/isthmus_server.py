"""The isthmus receiver for bench/webhooks: `python isthmus_server.py PORT QUEUE_FILE SECRET [THREADS]`.
Serves until SIGTERM; prints "ready" once it listens."""

from __future__ import annotations

import signal
import sys
import threading

import isthmus


def main() -> None:
    port, path, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rx = isthmus.WebhookReceiver(routes={"/hooks/crm": {"scheme": "standard", "secret": secret}},
                                 queue=isthmus.LocalQueue(path), port=port, threads=threads,
                                 max_depth=10_000_000)
    with rx:
        print("ready", flush=True)
        stop.wait()
    print(rx.stats(), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
