"""The child of test_reliability.py::test_crash_resume: one pipeline run, maybe killed.

    python crash_child.py SRC_URL DST_URL STATE MODE

MODE is ``run`` (the parent may SIGKILL it at any time), ``checkpoint:K`` (SIGKILL itself
inside the K-th checkpoint transaction, after the checkpoint row is written and before COMMIT)
or ``token:K`` (SIGKILL itself while the K-th access token of this process is being delivered
to the client, i.e. in the middle of a token rotation). Both sandboxes live in the parent.
"""

from __future__ import annotations

import os
import signal
import sys

import isthmus
from isthmus.store import StateStore

PAGE = 100
CLIENT_ID, CLIENT_SECRET = "crash-client", "crash-secret"


class _KillingConnection:
    """Forwards to a sqlite3 connection; SIGKILLs the process inside the K-th checkpoint write."""

    def __init__(self, db, kill_at: int):
        self._db, self._kill_at, self._seen = db, kill_at, 0

    def execute(self, sql, *args):
        cur = self._db.execute(sql, *args)
        if sql.startswith("INSERT INTO checkpoints"):
            self._seen += 1
            if self._seen == self._kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # the transaction is open: BEGIN .. no COMMIT
        return cur

    def __getattr__(self, name):
        return getattr(self._db, name)


def main() -> None:
    src_url, dst_url, state_path, mode = sys.argv[1:5]
    kind, _, k = mode.partition(":")
    store = StateStore(state_path)
    if kind == "checkpoint":
        store._db = _KillingConnection(store._db, int(k))
    tokens = 0

    def on_token(event):
        nonlocal tokens
        tokens += 1
        if kind == "token" and tokens == int(k):
            os.kill(os.getpid(), signal.SIGKILL)

    auth = isthmus.OAuth2ClientCredentials(src_url + "/oauth/token", CLIENT_ID, CLIENT_SECRET,
                                           refresh_before=0.2, on_token=on_token)
    with isthmus.Client(src_url, auth=auth, timeout=5) as src, isthmus.Client(dst_url, timeout=5) as dst:
        stream = isthmus.Stream(src, "/v1/contacts",
                                paginator=isthmus.OffsetPaginator(limit=PAGE, total="meta.total", window=4))
        pipeline = isthmus.Pipeline(stream, map=lambda r: {"id": r["id"], "email": r.get("email")},
                                    sink=isthmus.HttpSink(dst, "/v1/contacts/batch", batch_size=PAGE),
                                    state=store, checkpoint_every=500)
        run = pipeline.run()
        print("summary", run.summary(), flush=True)


if __name__ == "__main__":
    main()
