"""The queue backends side by side on one RabbitMQ broker: what a put, a lease and an ack cost.

Rows, each on its own fresh queue, the same messages (200-byte bodies):
- put: AmqpQueue.put of batches (one confirm wait per batch), against pika publishing the
  same batches on a confirm channel of a BlockingConnection (it waits for each message's
  confirm: the blocking adapter offers no other way) and LocalQueue (one fsync per batch);
- take: lease(1) then ack, one message at a time (a worker's loop), against pika's
  basic_get + basic_ack on the same queue type and LocalQueue.

    python bench/queue/run.py              # 5,000 messages
    python bench/queue/run.py --messages 20000 --batch 100
    make bench B=queue
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent / "tests" / "python"))
import common  # noqa: E402

NAME = "queue"
COLUMNS = (("seconds", "wall_s", 2), ("µs per message", "us_per_message", 0))


def _row(tool: str, what: str, n: int, seconds: float, note: str = "") -> dict:
    return {"tool": f"{tool} {what}", "value": round(n / seconds), "wall_s": seconds,
            "us_per_message": seconds / n * 1e6, "note": note}


def bench_isthmus(q, bodies: list[str], batch: int, label: str) -> list[dict]:
    t0 = time.perf_counter()
    for i in range(0, len(bodies), batch):
        q.put(bodies[i:i + batch])
    put_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    taken = 0
    while lease := q.lease(1, visibility=60):
        taken += q.ack(lease)
    take_s = time.perf_counter() - t0
    assert taken == len(bodies), (label, taken)
    return [_row(label, f"put (batches of {batch})", len(bodies), put_s),
            _row(label, "lease(1) + ack", len(bodies), take_s)]


def bench_pika(url: str, bodies: list[str], batch: int) -> list[dict]:
    import pika
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    name = f"bench-pika-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    channel.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2, content_type="text/plain")
    t0 = time.perf_counter()
    for body in bodies:
        channel.basic_publish("", name, body.encode(), props, mandatory=True)
    put_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    taken = 0
    while True:
        method, _, _ = channel.basic_get(name, auto_ack=False)
        if method is None:
            break
        channel.basic_ack(method.delivery_tag)
        taken += 1
    take_s = time.perf_counter() - t0
    channel.queue_delete(name)
    connection.close()
    assert taken == len(bodies), ("pika", taken)
    return [_row("pika", "publish, confirm each", len(bodies), put_s, "BlockingConnection"),
            _row("pika", "basic_get + basic_ack", len(bodies), take_s, "BlockingConnection")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()
    try:
        import isthmus
        import servers
    except ImportError as exc:
        print(f"isthmus is not installed here ({exc}); run `make install` first", file=sys.stderr)
        return 2
    if not servers.have_rabbitmq:
        print("rabbitmq-server is not installed (scripts/install-deps.sh installs it)", file=sys.stderr)
        return common.EXIT_SKIP
    machine = common.machine_info()
    bodies = [f"message {i:08d} " + "x" * 183 for i in range(args.messages)]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="isthmus-bench-queue-") as tmp:
        with servers.RabbitMQ(Path(tmp)) as broker:
            with isthmus.AmqpQueue(broker.url, f"bench-{uuid.uuid4().hex[:8]}") as q:
                rows += bench_isthmus(q, bodies, args.batch, "AmqpQueue")
            rows += bench_pika(broker.url, bodies, args.batch)
        with isthmus.LocalQueue(Path(tmp) / "q.db") as q:
            rows += bench_isthmus(q, bodies, args.batch, "LocalQueue")
    common.print_table(f"queue: {args.messages:,} messages of 200 bytes, one RabbitMQ 3.10 broker on loopback",
                       rows, references=(), unit="messages/s", columns=COLUMNS)
    path = common.write_results(NAME, rows, unit="messages/s", machine=machine,
                                settings={"messages": args.messages, "batch": args.batch})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    common.run_main(main, "the broker")
