"""The child of test_reliability.py::test_crash_resume: one pipeline run, maybe killed.

    ISTHMUS_TOKEN_KEY=... python crash_child.py SRC_URL DST_URL STATE TOKENS REFRESH_TOKEN MODE

The source uses OAuth2 refresh tokens that the server rotates (each is single use), kept in
the encrypted token store TOKENS. MODE says where this process SIGKILLs itself:

- ``run``: nowhere (the parent may SIGKILL it at any time);
- ``checkpoint:K``: inside the K-th checkpoint transaction (the core's), after the checkpoint
  row is written, as its COMMIT writes the first bytes to the write-ahead log;
- ``token:K:torn``: inside the token store's write of the K-th token this process receives
  (a rotated refresh token), after the first bytes of the transaction reached the store's
  write-ahead log and before its commit record is complete;
- ``token:K:unsynced``: inside the same write, once every byte of the transaction (commit
  record included) is written and before it is fsynced;
- ``token:K:saved``: after the K-th token is saved, before any request uses it.

``reauthorize`` as a 7th argument: drop what the store holds and start from REFRESH_TOKEN
(a new grant, as after a user authorized again). Both sandboxes live in the parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any, Optional

import isthmus
from isthmus.store import StateStore

PAGE = 100
CLIENT_ID, CLIENT_SECRET = "crash-client", "crash-secret"
STORE_ID = "crash-source"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _KillingCommits:
    """Forwards to the core's state store; arms ``switch`` in the K-th checkpoint commit, so the
    process dies inside that transaction as SQLite writes it to the log."""

    def __init__(self, store, switch: WalKillSwitch, kill_at: int):
        self._store, self._switch, self._kill_at, self._seen = store, switch, kill_at, 0

    def commit(self, *args):
        self._seen += 1
        if self._seen == self._kill_at:
            self._switch.kill_on_next_write = True
        return self._store.commit(*args)

    def __getattr__(self, name):
        return getattr(self._store, name)


# -- a kill switch inside SQLite's file writes ---------------------------------------------------
# The token store and the state store are C++ code writing through the system libsqlite3, the
# same library Python's sqlite3 module loads. A VFS registered here as the default wraps the unix
# VFS: files are opened by it, and the write-ahead log of one store gets xWrite/xSync wrappers
# that can SIGKILL the process at an exact point of a transaction.

# The name is a bare pointer: the unix VFS keeps the pointer it is given (and derives the -shm
# name from it later), so it must get SQLite's own string, not a copy ctypes frees on return.
_OPEN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                         ctypes.c_void_p)
_WRITE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64)
_SYNC = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)


class _Vfs(ctypes.Structure):  # sqlite3_vfs, version 3
    _fields_ = [("iVersion", ctypes.c_int), ("szOsFile", ctypes.c_int), ("mxPathname", ctypes.c_int),
                ("pNext", ctypes.c_void_p), ("zName", ctypes.c_char_p), ("pAppData", ctypes.c_void_p),
                ("xOpen", ctypes.c_void_p)] + [(f"x{i}", ctypes.c_void_p) for i in range(15)]


class _IoMethods(ctypes.Structure):  # sqlite3_io_methods, version 3
    _fields_ = [("iVersion", ctypes.c_int)] + [(name, ctypes.c_void_p) for name in (
        "xClose", "xRead", "xWrite", "xTruncate", "xSync", "xFileSize", "xLock", "xUnlock",
        "xCheckReservedLock", "xFileControl", "xSectorSize", "xDeviceCharacteristics", "xShmMap",
        "xShmLock", "xShmBarrier", "xShmUnmap", "xFetch", "xUnfetch")]


class WalKillSwitch:
    """Counts write transactions on one database's WAL; kills inside the ``kill_at``-th one."""

    def __init__(self, db_path: str, phase: str):
        self.suffix = os.path.basename(db_path) + "-wal"
        self.phase = phase  # "torn" or "unsynced"
        self.kill_at: Optional[int] = None  # armed later: the transaction number to kill in
        self.transactions = 0
        self.in_transaction = False
        # Set while a transaction is open: the process dies once the log write after it is done.
        self.kill_on_next_write = False
        lib = ctypes.CDLL("libsqlite3.so.0")
        lib.sqlite3_vfs_find.restype = ctypes.c_void_p
        lib.sqlite3_vfs_find.argtypes = [ctypes.c_char_p]
        lib.sqlite3_vfs_register.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._unix = _Vfs.from_address(lib.sqlite3_vfs_find(None))
        self._real_open = _OPEN(self._unix.xOpen)
        self._real_methods: dict = {}  # address of a patched io_methods -> (it, real xWrite, real xSync)
        self._vfs = _Vfs()
        ctypes.memmove(ctypes.byref(self._vfs), ctypes.byref(self._unix), ctypes.sizeof(_Vfs))
        self._vfs.zName = b"isthmus-crash-test"  # a copy: every other method stays the unix one
        self._callbacks = (_OPEN(self._open), _WRITE(self._write), _SYNC(self._sync))
        self._vfs.xOpen = ctypes.cast(self._callbacks[0], ctypes.c_void_p)
        if lib.sqlite3_vfs_register(ctypes.byref(self._vfs), 1) != 0:
            raise RuntimeError("sqlite3_vfs_register failed")

    def _open(self, vfs: Any, name: Optional[int], file: int, flags: int, out_flags: Any) -> int:
        rc = self._real_open(ctypes.addressof(self._unix), name, file, flags, out_flags)
        if rc == 0 and name and ctypes.string_at(name).decode(errors="replace").endswith(self.suffix):
            methods = ctypes.c_void_p.from_address(file)  # sqlite3_file.pMethods
            real = _IoMethods.from_address(methods.value)
            patched = _IoMethods()
            ctypes.memmove(ctypes.byref(patched), ctypes.byref(real), ctypes.sizeof(_IoMethods))
            patched.xWrite = ctypes.cast(self._callbacks[1], ctypes.c_void_p)
            patched.xSync = ctypes.cast(self._callbacks[2], ctypes.c_void_p)
            self._real_methods[ctypes.addressof(patched)] = (patched, _WRITE(real.xWrite), _SYNC(real.xSync))
            methods.value = ctypes.addressof(patched)
        return rc

    def _real(self, file: int) -> tuple:
        return self._real_methods[ctypes.c_void_p.from_address(file).value]

    def _write(self, file: int, data: int, n: int, offset: int) -> int:
        if not self.in_transaction:
            self.in_transaction = True
            self.transactions += 1
        rc = self._real(file)[1](file, data, n, offset)
        if self.kill_on_next_write:
            _die()  # the first bytes of the commit are in the log, its commit record is not
        if self.phase == "torn" and self.transactions == self.kill_at:
            _die()  # some of the transaction is in the log, its commit record is not complete
        return rc

    def _sync(self, file: int, flags: int) -> int:
        if self.in_transaction:
            self.in_transaction = False
            if self.phase == "unsynced" and self.transactions == self.kill_at:
                _die()  # every byte is written, commit record included, none of it fsynced
        return self._real(file)[2](file, flags)


def main() -> None:
    src_url, dst_url, state_path, tokens_path, refresh_token, mode = sys.argv[1:7]
    reauthorize = sys.argv[7:] == ["reauthorize"]
    kind, _, rest = mode.partition(":")
    k, _, phase = rest.partition(":")
    switch = WalKillSwitch(tokens_path, phase) if kind == "token" and phase in ("torn", "unsynced") else None
    if kind == "checkpoint":
        state_switch = WalKillSwitch(state_path, "")  # before the store opens its file through it
    state = StateStore(state_path)
    if kind == "checkpoint":
        state._core = _KillingCommits(state._core, state_switch, int(k))  # type: ignore[assignment]
    tokens = isthmus.TokenStore.sqlite(tokens_path)
    if reauthorize:
        tokens.forget(STORE_ID)
    received = 0

    def on_token(event):
        # Runs after the token is saved and before any request uses it.
        nonlocal received
        received += 1
        if kind == "token" and phase == "saved" and received == int(k):
            _die()
        if switch is not None and received == int(k) - 1:
            switch.kill_at = switch.transactions + 1  # the next save is the K-th

    auth = isthmus.OAuth2RefreshToken(src_url + "/oauth/token", CLIENT_ID, CLIENT_SECRET, refresh_token,
                                      store=tokens, store_id=STORE_ID, refresh_before=0.2, on_token=on_token)
    if switch is not None and int(k) == 1:
        switch.kill_at = switch.transactions + 1
    with isthmus.Client(src_url, auth=auth, timeout=5) as src, isthmus.Client(dst_url, timeout=5) as dst:
        stream = isthmus.Stream(src, "/v1/contacts",
                                paginator=isthmus.OffsetPaginator(limit=PAGE, total="meta.total", window=4))
        pipeline = isthmus.Pipeline(stream, map=lambda r: {"id": r["id"], "email": r.get("email")},
                                    sink=isthmus.HttpSink(dst, "/v1/contacts/batch", batch_size=PAGE),
                                    state=state, checkpoint_every=500)
        run = pipeline.run()
        print("summary", run.summary(), flush=True)


if __name__ == "__main__":
    main()
