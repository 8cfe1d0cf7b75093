"""`make demo`: one complete integration, end to end, on 127.0.0.1.

A rate-limited source CRM with 1% injected faults -> a Python mapping -> a second sandbox's
idempotent batch import. 200,000 contacts, a progress bar, the run's summary, and then the
destination's own count: every record arrived exactly once.

Run with ``python -m isthmus.demo [records]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any, Dict

import isthmus

FAULTS = {"error_rate": {"503": 0.005, "500": 0.005}}


def to_our_contact(c: Dict[str, Any]) -> Dict[str, Any]:
    """The mapping a product engineer writes: their CRM's contact -> our contact."""
    address = c.get("address") or {}
    return {
        "id": c["id"],
        "email": (c.get("email") or "").lower(),
        "name": " ".join(p for p in (c.get("first_name"), c.get("last_name")) if p) or c.get("name"),
        "country": address.get("country"),
        "tags": sorted(c.get("tags") or []),
        "source": "crm",
    }


def main(records: int = 200_000) -> int:
    with isthmus.Sandbox(records=records, pagination="offset", max_page_size=500, rate_limit=300, burst=40,
                         faults={"GET /v1/contacts": FAULTS}) as crm, \
            isthmus.Sandbox(faults={"POST /v1/contacts/batch": FAULTS}) as ours, \
            isthmus.Client(crm.url) as source, isthmus.Client(ours.url) as dest, \
            tempfile.TemporaryDirectory() as tmp:
        print(f"source CRM   {crm.url}  {records:,} contacts, offset pages of 500, 300 requests/s, 1% faults")
        print(f"destination  {ours.url}  POST /v1/contacts/batch (idempotent), 1% faults")
        contacts = isthmus.Stream(source, "/v1/contacts", records="data",
                                  paginator=isthmus.OffsetPaginator(limit=500, total="meta.total", window=8))
        pipeline = isthmus.Pipeline(contacts, map=to_our_contact,
                                    sink=isthmus.HttpSink(dest, "/v1/contacts/batch", batch_size=250),
                                    state=os.path.join(tmp, "demo.db"))
        run = pipeline.run(progress=True)
        print(run)
        for key, value in run.summary().items():
            print(f"  {key:<14} {value:,}" if isinstance(value, int) and not isinstance(value, bool)
                  else f"  {key:<14} {value}")
        got = ours.stats()["records_received"].get("contacts", {})
        faults = sum(crm.stats()["faults"].values()) + sum(ours.stats()["faults"].values())
        print(f"faults injected: {faults:,}; the destination counted {got.get('unique', 0):,} unique contacts, "
              f"{got.get('duplicate', 0):,} duplicates, {got.get('idempotent_replays', 0):,} idempotent replays")
        ok = got.get("unique") == records == run.counts["written"] and got.get("duplicate", 0) == 0
        print("every record arrived exactly once" if ok
              else "MISMATCH: the destination does not have every record once")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000))
