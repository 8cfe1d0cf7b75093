"""The queue backends side by side on one RabbitMQ broker: what a put, a lease and an ack cost.

Rows, each on its own fresh queue, the same messages (200-byte bodies):
- put: AmqpQueue.put of batches (one confirm wait per batch) and LocalQueue (one fsync per
  batch), against pika on its asynchronous SelectConnection publishing with confirms in flight:
  up to `--window` unconfirmed publishes, tracked by delivery tag (the broker's `multiple`
  acks retire a run of them at once), a nack or a returned message failing the row;
- take: lease(1) then ack, one message at a time (a worker's loop), and lease(batch) then ack,
  by basic.get and by a consuming AmqpQueue (the broker pushes under `--prefetch`), against
  pika consuming with basic_consume under a prefetch of `--prefetch`, acking each delivery as
  it is handled.
CPU is the benchmark process's own (the core's threads included; the broker excluded).

    python bench/queue/run.py              # 5,000 messages
    python bench/queue/run.py --messages 20000 --batch 100 --window 1000 --prefetch 500
    make bench B=queue
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent / "tests" / "python"))
import common  # noqa: E402

NAME = "queue"
COLUMNS = (("seconds", "wall_s", 2), ("µs per message", "us_per_message", 0), ("CPU µs/message", "cpu_us", 0))


def _row(tool: str, what: str, n: int, seconds: float, cpu_s: float, note: str = "") -> dict:
    return {"tool": f"{tool} {what}", "value": round(n / seconds), "wall_s": seconds,
            "us_per_message": seconds / n * 1e6, "cpu_us": cpu_s / n * 1e6, "note": note}


class _Clock:
    """Wall and process CPU seconds since start()."""

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.t0, time.process_time() - self.c0


def bench_isthmus(q, bodies: list[str], batch: int, label: str) -> list[dict]:
    clock = _Clock()
    clock.start()
    for i in range(0, len(bodies), batch):
        q.put(bodies[i:i + batch])
    put_s, put_cpu = clock.stop()
    rows = [_row(label, f"put (batches of {batch})", len(bodies), put_s, put_cpu)]
    for n in (1, batch):
        if n > 1:
            for i in range(0, len(bodies), batch):
                q.put(bodies[i:i + batch])
        clock.start()
        taken = 0
        while lease := q.lease(n, visibility=60):
            taken += q.ack(lease)
        take_s, take_cpu = clock.stop()
        assert taken == len(bodies), (label, n, taken)
        rows.append(_row(label, f"lease({n}) + ack", len(bodies), take_s, take_cpu))
    return rows


def bench_consuming(url: str, name: str, bodies: list[str], batch: int, prefetch: int) -> list[dict]:
    """The broker pushing to a consuming AmqpQueue (basic.consume under `prefetch`, as a worker's
    slots take tasks), leased `batch` at a time and acked, against basic.get above."""
    import isthmus

    rows = []
    with isthmus.AmqpQueue(url, name) as q:
        for i in range(0, len(bodies), batch):
            q.put(bodies[i:i + batch])
    for n in (1, batch):
        with isthmus.AmqpQueue(url, name, consume=True, prefetch=prefetch) as q:
            if n > 1:
                for i in range(0, len(bodies), batch):
                    q.put(bodies[i:i + batch])
            clock = _Clock()
            clock.start()
            taken = 0
            while taken < len(bodies):
                lease = q.lease(n, visibility=60, wait=5)
                if not lease:
                    raise RuntimeError(f"consuming AmqpQueue: {taken} of {len(bodies)} taken, then nothing for 5 s")
                taken += q.ack(lease)
            take_s, take_cpu = clock.stop()
        rows.append(_row("AmqpQueue", f"consume, prefetch {prefetch}: lease({n}) + ack", len(bodies), take_s,
                         take_cpu))
    return rows


class _PikaPeer:
    """pika as a capable engineer would drive it: one SelectConnection, a confirm channel with
    a window of publishes in flight, then a consumer under a prefetch that acks each delivery.
    Every step is a callback on pika's I/O loop; nothing blocks on a round trip."""

    def __init__(self, url: str, bodies: list[str], window: int, prefetch: int):
        import pika

        self.pika = pika
        self.params = pika.URLParameters(url)
        self.bodies = [b.encode() for b in bodies]
        self.window, self.prefetch = window, prefetch
        self.queue = f"bench-pika-{uuid.uuid4().hex[:8]}"
        self.props = pika.BasicProperties(delivery_mode=2, content_type="text/plain")
        self.sent = 0
        self.unconfirmed: deque[int] = deque()  # delivery tags, ascending
        self.confirmed = 0
        self.taken = 0
        self.clock = _Clock()
        self.put: tuple[float, float] = (0.0, 0.0)
        self.take: tuple[float, float] = (0.0, 0.0)
        self.error: str | None = None
        self.connection = None
        self.channel = None

    def run(self) -> None:
        from pika.adapters.select_connection import SelectConnection

        self.connection = SelectConnection(self.params, on_open_callback=self._on_open,
                                           on_open_error_callback=self._on_open_error,
                                           on_close_callback=lambda _c, _reason: self.connection.ioloop.stop())
        self.connection.ioloop.start()
        if self.error:
            raise RuntimeError(f"pika: {self.error}")

    def _fail(self, why: str) -> None:
        self.error = self.error or why
        if self.connection and not (self.connection.is_closing or self.connection.is_closed):
            self.connection.close()

    def _on_open_error(self, _connection, exc) -> None:
        self.error = f"cannot connect: {exc}"
        self.connection.ioloop.stop()

    def _on_open(self, connection) -> None:
        connection.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel) -> None:
        self.channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(lambda *_: self._fail("a message came back unrouted"))
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: self._declare())

    def _on_channel_closed(self, _channel, reason) -> None:
        if self.taken < len(self.bodies):  # closing after the last ack is the normal end
            self._fail(f"channel closed: {reason}")

    def _declare(self) -> None:
        self.channel.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "quorum"},
                                   callback=lambda _frame: self._start_publishing())

    def _start_publishing(self) -> None:
        self.clock.start()
        self._publish()

    def _publish(self) -> None:
        while self.sent < len(self.bodies) and len(self.unconfirmed) < self.window:
            self.channel.basic_publish("", self.queue, self.bodies[self.sent], self.props, mandatory=True)
            self.sent += 1
            self.unconfirmed.append(self.sent)  # a confirm channel numbers publishes from 1

    def _on_confirm(self, frame) -> None:
        method = frame.method
        if isinstance(method, self.pika.spec.Basic.Nack):
            return self._fail(f"the broker nacked delivery tag {method.delivery_tag}")
        tag = method.delivery_tag
        if method.multiple:
            while self.unconfirmed and self.unconfirmed[0] <= tag:
                self.unconfirmed.popleft()
                self.confirmed += 1
        else:
            # Confirms may come out of order; a single one retires just its own tag.
            self.unconfirmed.remove(tag)
            self.confirmed += 1
        if self.confirmed == len(self.bodies):
            self.put = self.clock.stop()
            self.channel.basic_qos(prefetch_count=self.prefetch, callback=lambda _frame: self._consume())
        else:
            self._publish()

    def _consume(self) -> None:
        self.clock.start()
        self.channel.basic_consume(self.queue, self._on_message, auto_ack=False)

    def _on_message(self, channel, method, _props, _body) -> None:
        channel.basic_ack(method.delivery_tag)
        self.taken += 1
        if self.taken == len(self.bodies):
            self.take = self.clock.stop()
            channel.queue_delete(self.queue, callback=lambda _frame: self.connection.close())


def bench_pika(url: str, bodies: list[str], window: int, prefetch: int) -> list[dict]:
    peer = _PikaPeer(url, bodies, window, prefetch)
    peer.run()
    assert peer.taken == len(bodies), ("pika", peer.taken)
    note = "SelectConnection"
    return [_row("pika", f"publish, {window} confirms in flight", len(bodies), *peer.put, note),
            _row("pika", f"consume, prefetch {prefetch}, ack each", len(bodies), *peer.take, note)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--window", type=int, default=500, help="pika: unconfirmed publishes in flight")
    ap.add_argument("--prefetch", type=int, default=200, help="pika and the consuming AmqpQueue: the prefetch")
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
            rows += bench_consuming(broker.url, f"bench-{uuid.uuid4().hex[:8]}", bodies, args.batch, args.prefetch)
            rows += bench_pika(broker.url, bodies, args.window, args.prefetch)
        with isthmus.LocalQueue(Path(tmp) / "q.db") as q:
            rows += bench_isthmus(q, bodies, args.batch, "LocalQueue")
    common.print_table(f"queue: {args.messages:,} messages of 200 bytes, one RabbitMQ 3.10 broker on loopback",
                       rows, references=(), unit="messages/s", columns=COLUMNS)
    path = common.write_results(NAME, rows, unit="messages/s", machine=machine,
                                settings={"messages": args.messages, "batch": args.batch,
                                          "window": args.window, "prefetch": args.prefetch})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    common.run_main(main, "the broker")
