"""Tenant-supplied server logic: each tenant's script runs in a fresh sandbox from a
pool, reads its data through its own open(), keeps state in a per-tenant key-value
store, and can be cut off by revoking its grant.

Run:  python examples/tenant_scripts.py
"""

import pathlib
import tempfile

from capbridge import RemoteError, SandboxPool, revocable
from host_apis import KeyValueStore, MemoryFS

TENANT_SCRIPT = '''
import csv, json
with open("/data/orders.csv", newline="") as f:
    rows = list(csv.DictReader(f))
total = sum(int(r["qty"]) * float(r["price"]) for r in rows)
store["runs"] = store.get("runs", 0) + 1
store["last_total"] = total
print(f"{len(rows)} orders, total {total:.2f}, run #{store['runs']}")
'''


def main() -> None:
    work = pathlib.Path(tempfile.mkdtemp())
    files = {"/data/orders.csv": "item,qty,price\napple,3,0.5\npear,2,1.25\n"}
    with SandboxPool(2) as pool:
        for tenant in ("acme", "globex"):
            kv = KeyValueStore(str(work / "kv.sqlite"), namespace=tenant)
            store, revoke = revocable(kv)
            with pool.sandbox() as sb:
                sb.grant("fs", MemoryFS(files))  # the sandbox's open() now reads this
                sb.grant("store", store)
                sb.exec(TENANT_SCRIPT, filename=f"<{tenant}>")
                sb.exec(TENANT_SCRIPT, filename=f"<{tenant}>")
                revoke()  # the tenant is cut off: its store handle stops working
                try:
                    sb.exec("store['runs'] = 0")
                except RemoteError as err:
                    print(f"{tenant} after revoke: {err.type_name}")
            print(f"{tenant} on the host: runs={kv.get('runs')}, last_total={kv.get('last_total')}")
            kv.close()


if __name__ == "__main__":
    main()
