"""One pipeline client per process: `python clients.py TOOL URL RECORDS PAGE OUT [--sink-url URL]`.

Each reads every record of GET /v1/contacts (offset pagination, PAGE per page, WINDOW pages in
flight) from the sandbox at URL, applies the same trivial mapping and writes it to OUT as JSON
Lines (or, for `isthmus-fieldmap-http`, POSTs it to the sandbox at --sink-url), then prints one
JSON line: records written, the seconds and CPU seconds of the work itself (imports and
interpreter start-up excluded, every thread and any worker process included), and, for the
isthmus rows, the run's time per stage. The parent also measures the whole process from outside.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Any, Callable

EXIT_SKIP = 3
# Pages in flight for every tool: the same window, so the tools differ only in how they use it.
WINDOW = 16


def trivial(r: dict) -> dict:
    r["source"] = "crm"
    return r


# The same mapping declared as fields, which the core runs without calling Python per record.
CONTACT_FIELDS = ["id", "first_name", "last_name", "email", "phone", "company_id", "address", "tags", "notes",
                  "version", "created_at", "updated_at"]


def _fieldmap() -> Any:
    import isthmus

    return isthmus.FieldMap({**{f: f for f in CONTACT_FIELDS}, "source": {"value": "crm"}})


def _cpu_s() -> float:
    # RUSAGE_SELF covers every thread; RUSAGE_CHILDREN the worker processes a tool reaped (dlt's).
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# ---------------------------------------------------------------------------------------------
# isthmus

def prepare_isthmus(url: str, page: int, out: str, mapping: Any = trivial, sink_url: str | None = None
                    ) -> Callable[[], dict]:
    import isthmus

    def work() -> dict:
        clients = [isthmus.Client(url, max_connections=WINDOW)]
        try:
            extra = {}
            if os.environ.get("ISTHMUS_PARSER"):  # `python` compares json.loads with the core's parser
                extra["parser"] = os.environ["ISTHMUS_PARSER"]
            stream = isthmus.Stream(clients[0], "/v1/contacts", records="data",
                                    paginator=isthmus.OffsetPaginator(limit=page, total="meta.total",
                                                                      window=WINDOW), **extra)
            if sink_url:
                clients.append(isthmus.Client(sink_url, max_connections=8))
                # One POST per page's worth of records; the import endpoint takes up to 1000.
                sink: Any = isthmus.HttpSink(clients[1], "/v1/contacts/batch", batch_size=page, concurrency=8)
            else:
                sink = isthmus.JsonlSink(out)
            run = isthmus.Pipeline(stream, map=mapping, sink=sink, state=out + ".state.db",
                                   checkpoint_every=50_000).run()
        finally:
            for c in clients:
                c.close()
        s = run.summary()
        return {"records": int(s["written"]), "stage_seconds": s.get("stage_seconds"),
                "requests": int(s.get("requests") or 0)}
    return work


# ---------------------------------------------------------------------------------------------
# aiohttp + asyncio, written the way one would for speed

def prepare_aiohttp(url: str, page: int, out: str, use_orjson: bool = False) -> Callable[[], dict]:
    import asyncio

    import aiohttp

    if use_orjson:
        try:
            import orjson
        except ImportError:
            sys.exit(EXIT_SKIP)

        loads: Callable[[Any], Any] = orjson.loads

        def encode(batch: list) -> bytes:
            return b"".join(orjson.dumps(trivial(x)) + b"\n" for x in batch)
    else:
        loads = json.loads

        def encode(batch: list) -> bytes:
            return "".join(json.dumps(trivial(x), ensure_ascii=False, separators=(",", ":")) + "\n"
                           for x in batch).encode()

    async def fetch(s: aiohttp.ClientSession, offset: int) -> dict:
        for attempt in range(6):
            async with s.get(f"{url}/v1/contacts", params={"offset": offset, "limit": page}) as r:
                if r.status == 200:
                    return loads(await r.read())
            await asyncio.sleep(0.1 * 2 ** attempt)
        raise RuntimeError(f"offset {offset} kept failing")

    async def main() -> int:
        # One session, one keep-alive pool sized for the window.
        connector = aiohttp.TCPConnector(limit=WINDOW, limit_per_host=WINDOW)
        async with aiohttp.ClientSession(connector=connector) as s:
            first = await fetch(s, 0)
            total = first["meta"]["total"]
            offsets = list(range(page, total, page))
            done: dict[int, Any] = {}  # page index -> records (or the error), not yet written
            progress = asyncio.Condition()
            written_pages = 0
            slots = asyncio.Semaphore(WINDOW)

            async def fetch_page(i: int) -> None:
                try:
                    got: Any = (await fetch(s, offsets[i]))["data"]
                except Exception as exc:  # handed to the writer, which raises it in page order
                    got = exc
                slots.release()  # the next page starts as soon as this one has arrived
                async with progress:
                    done[i] = got
                    progress.notify_all()

            async def launch() -> None:
                tasks = set()
                for i in range(len(offsets)):
                    await slots.acquire()
                    # Pages finish out of order; bound how far ahead of the writer they may run.
                    async with progress:
                        await progress.wait_for(lambda i=i: i - written_pages < 4 * WINDOW)
                    t = asyncio.create_task(fetch_page(i))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)

            launcher = asyncio.create_task(launch())
            written = 0
            with open(out, "wb") as f:
                f.write(encode(first["data"]))
                written += len(first["data"])
                # The writer: pages in page order, each as soon as it and those before it are in.
                for i in range(len(offsets)):
                    async with progress:
                        await progress.wait_for(lambda i=i: i in done)
                        records = done.pop(i)
                    if isinstance(records, Exception):
                        launcher.cancel()
                        raise records
                    f.write(encode(records))
                    written += len(records)
                    async with progress:
                        written_pages = i + 1
                        progress.notify_all()
                f.flush()
                os.fsync(f.fileno())  # as durable at the end as the isthmus rows' last checkpoint
            await launcher
        return written

    def work() -> dict:
        return {"records": asyncio.run(main()), "requests": None}
    return work


# ---------------------------------------------------------------------------------------------
# dlt, as its performance guide suggests: pages yielded whole, nested data left as JSON

def prepare_dlt(url: str, page: int, out: str) -> Callable[[], dict]:
    try:
        import dlt
        from dlt.sources.rest_api import rest_api_source
    except ImportError:
        sys.exit(EXIT_SKIP)
    where = os.path.dirname(os.path.abspath(out))
    os.environ["DESTINATION__FILESYSTEM__BUCKET_URL"] = "file://" + where
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    # dlt's performance guide also offers bigger buffers and parallel normalize workers
    # (DATA_WRITER__BUFFER_MAX_ITEMS, EXTRACT__DATA_WRITER__FILE_MAX_ITEMS, NORMALIZE__WORKERS);
    # here, on 2 cores, they were no faster at 1,000,000 records (3,274 vs 3,402 records/s) and
    # cost 80 MB more, so dlt's defaults stand. Those variables still apply when set.

    def work() -> dict:
        source = rest_api_source({
            "client": {"base_url": url + "/v1/"},
            "resources": [{
                "name": "contacts",
                "endpoint": {
                    "path": "contacts",
                    "data_selector": "data",
                    "paginator": {"type": "offset", "limit": page, "offset_param": "offset",
                                  "limit_param": "limit", "total_path": "meta.total"},
                },
            }],
        # Nested fields stay JSON in the one table, as the other tools write them, instead of
        # child tables for `tags` and flattened `address__*` columns.
        }, max_table_nesting=0)
        source.contacts.add_map(trivial)
        pipeline = dlt.pipeline(pipeline_name="bench_pipeline", destination="filesystem",
                                dataset_name="bench", pipelines_dir=where + "/.dlt")
        pipeline.run(source, loader_file_format="jsonl")
        counts = pipeline.last_trace.last_normalize_info.row_counts
        return {"records": int(counts.get("contacts", 0)), "requests": None}
    return work


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tool")
    ap.add_argument("url")
    ap.add_argument("records", type=int)
    ap.add_argument("page", type=int)
    ap.add_argument("out")
    ap.add_argument("--sink-url", help="the sandbox whose import endpoint isthmus-fieldmap-http posts to")
    a = ap.parse_args()
    # Imports and set-up first: what is timed below is the work, the same span for every tool.
    prepare: dict[str, Callable[[], Callable[[], dict]]] = {
        "isthmus": lambda: prepare_isthmus(a.url, a.page, a.out),
        "isthmus-fieldmap": lambda: prepare_isthmus(a.url, a.page, a.out, _fieldmap()),
        "isthmus-fieldmap-http": lambda: prepare_isthmus(a.url, a.page, a.out, _fieldmap(), a.sink_url),
        "aiohttp": lambda: prepare_aiohttp(a.url, a.page, a.out),
        "aiohttp-orjson": lambda: prepare_aiohttp(a.url, a.page, a.out, use_orjson=True),
        "dlt": lambda: prepare_dlt(a.url, a.page, a.out),
    }
    if a.tool not in prepare:
        sys.exit(f"unknown tool {a.tool!r}; expected one of {', '.join(prepare)}")
    if a.tool == "isthmus-fieldmap-http" and not a.sink_url:
        sys.exit("isthmus-fieldmap-http needs --sink-url")
    work = prepare[a.tool]()
    cpu0, t0 = _cpu_s(), time.monotonic()
    report = work()
    seconds, cpu = time.monotonic() - t0, _cpu_s() - cpu0
    print(json.dumps({**report, "seconds": seconds, "cpu_s": cpu}))


if __name__ == "__main__":
    main()
