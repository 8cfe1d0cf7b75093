"""One pipeline client per process: `python clients.py TOOL URL RECORDS PAGE OUT`.

Each reads every record of GET /v1/contacts (offset pagination, PAGE per page) from the
sandbox at URL, applies the same trivial mapping and writes JSONL to OUT, then prints a JSON
line with what it did. The parent measures wall time, CPU and peak RSS from outside.
"""

from __future__ import annotations

import json
import os
import sys
import time

EXIT_SKIP = 3


def trivial(r: dict) -> dict:
    r["source"] = "crm"
    return r


# The same mapping declared as fields, which the core runs without calling Python per record.
CONTACT_FIELDS = ["id", "first_name", "last_name", "email", "phone", "company_id", "address", "tags", "notes",
                  "version", "created_at", "updated_at"]


def run_isthmus_fields(url: str, records: int, page: int, out: str) -> int:
    import isthmus

    fields = {**{f: f for f in CONTACT_FIELDS}, "source": {"value": "crm"}}
    return run_isthmus(url, records, page, out, isthmus.FieldMap(fields))


def run_isthmus_fields_http(url: str, records: int, page: int, out: str) -> int:
    """The FieldMap row with HttpSink: OUT is the URL of a second sandbox taking the batches."""
    import isthmus

    fields = {**{f: f for f in CONTACT_FIELDS}, "source": {"value": "crm"}}
    with isthmus.Client(out, max_connections=16) as dest:
        sink = isthmus.HttpSink(dest, "/v1/contacts/batch", batch_size=500, concurrency=8)
        return run_isthmus(url, records, page, "", isthmus.FieldMap(fields), sink=sink)


def run_isthmus(url: str, records: int, page: int, out: str, mapping=trivial, sink=None) -> int:
    import tempfile

    import isthmus

    state = (out or tempfile.mkdtemp()) + ".state.db"
    with isthmus.Client(url, max_connections=16) as client:
        # ISTHMUS_PARSER=python compares json.loads with the core's page parser (the default).
        stream = isthmus.Stream(client, "/v1/contacts", records="data",
                                paginator=isthmus.OffsetPaginator(limit=page, total="meta.total", window=8),
                                parser=os.environ.get("ISTHMUS_PARSER", "core"))
        run = isthmus.Pipeline(stream, map=mapping, sink=sink or isthmus.JsonlSink(out), state=state,
                               checkpoint_every=50_000).run()
    return run.counts["written"]


def run_aiohttp(url: str, records: int, page: int, out: str) -> int:
    import asyncio

    import aiohttp

    async def main() -> int:
        written = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as s:
            async with s.get(f"{url}/v1/contacts", params={"offset": 0, "limit": page}) as r:
                first = await r.json()
            total = first["meta"]["total"]
            with open(out, "w", encoding="utf-8") as f:
                def write(batch: list) -> None:
                    nonlocal written
                    f.write("".join(json.dumps(trivial(x), ensure_ascii=False, separators=(",", ":")) + "\n"
                                    for x in batch))
                    written += len(batch)

                write(first["data"])

                async def fetch(offset: int) -> list:
                    for attempt in range(6):
                        async with s.get(f"{url}/v1/contacts", params={"offset": offset, "limit": page}) as r:
                            if r.status == 200:
                                return (await r.json())["data"]
                        await asyncio.sleep(0.1 * 2 ** attempt)
                    raise RuntimeError(f"offset {offset} kept failing")

                offsets = list(range(page, total, page))
                # A window of 8 pages in flight, like the isthmus row; memory stays bounded.
                for i in range(0, len(offsets), 8):
                    for batch in await asyncio.gather(*(fetch(o) for o in offsets[i:i + 8])):
                        write(batch)
        return written

    return asyncio.run(main())


def run_dlt(url: str, records: int, page: int, out: str) -> int:
    try:
        import dlt
        from dlt.sources.rest_api import rest_api_source
    except ImportError:
        sys.exit(EXIT_SKIP)
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
    })
    source.contacts.add_map(trivial)
    os.environ["DESTINATION__FILESYSTEM__BUCKET_URL"] = "file://" + os.path.dirname(os.path.abspath(out))
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    pipeline = dlt.pipeline(pipeline_name="bench_pipeline", destination="filesystem",
                            dataset_name="bench", pipelines_dir=os.path.dirname(os.path.abspath(out)) + "/.dlt")
    pipeline.run(source, loader_file_format="jsonl")
    counts = pipeline.last_trace.last_normalize_info.row_counts
    return int(counts.get("contacts", 0))


def main() -> None:
    tool, url, records, page, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    started = time.monotonic()
    written = {"isthmus": run_isthmus, "isthmus-fieldmap": run_isthmus_fields,
               "isthmus-fieldmap-http": run_isthmus_fields_http, "aiohttp": run_aiohttp,
               "dlt": run_dlt}[tool](url, records, page, out)
    took = time.monotonic() - started
    print(json.dumps({"records": written, "seconds": took}))


if __name__ == "__main__":
    main()
