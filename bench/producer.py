"""A producer process for the benchmarks: post steps 0..N-1 of one date in one batched notify.

Usage: producer.py ETCD_URL DATE N. Prints {"first": t, "last": t} (time.monotonic, shared by every
process of the machine) when the notify started and when its last transaction returned.
"""

from __future__ import annotations

import json
import sys
import time

from common import MARS

from aviso_workflows import Store


def main() -> None:
    url, date, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = Store([url])
    request = store.request("mars", {**MARS, "date": date, "step": f"0/to/{count - 1}"})
    first = time.monotonic()
    store.notify(request)
    last = time.monotonic()
    print(json.dumps({"first": first, "last": last}), flush=True)


if __name__ == "__main__":
    main()
