#!/usr/bin/env python3
"""Stream rows into a Quarry table, exactly once, through the streaming API.

A producer owns a channel of a table. It asks the node where the channel
stands (GET ... -> next_offset), then sends its rows in batches, each with the
channel offset of its first row. After any failure it sends the same batch
again with the same offset: if the first attempt was committed (only its
answer was lost), the node answers 409 with the channel's next offset and the
producer moves on; nothing is written twice. Any node of the cluster takes
any request, so a producer may switch nodes between attempts.

    python3 examples/stream_producer.py --url http://127.0.0.1:8433 \\
        --table public.events --channel producer-1 --rows 100000 [--arrow]

The rows here are generated (id, name, amount); a real producer reads them
from its source (a Kafka partition, a log file) and keeps its channel's
offset equal to its position in that source, so that after a restart it
resumes from `next_offset` without gaps or duplicates.

Needs `requests` (and `pyarrow` for --arrow). On a node that asks for a
login, pass --user and --password (HTTP Basic) or --token (CREATE ACCESS
TOKEN), over https.
"""

import argparse
import io
import json
import sys
import time

import requests


def rows_from(start, count):
    """The producer's rows `start` .. `start + count` (its source)."""
    return [
        {"id": i, "name": f"event-{i}", "amount": round(i * 0.25, 2)}
        for i in range(start, start + count)
    ]


def ndjson(rows):
    return "".join(json.dumps(r) + "\n" for r in rows).encode(), "application/x-ndjson"


def arrow(rows):
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue(), "application/vnd.apache.arrow.stream"


class Producer:
    def __init__(self, urls, table, channel, auth=None, headers=None, verify=True):
        self.urls = urls
        self.node = 0
        self.base = f"/v1/tables/{table}/channels/{channel}"
        self.session = requests.Session()
        self.session.auth = auth
        self.session.headers.update(headers or {})
        self.session.verify = verify

    def url(self, path=""):
        return self.urls[self.node % len(self.urls)] + self.base + path

    def next_node(self):
        self.node += 1

    def next_offset(self):
        """Where the channel stands: 0 for one never written."""
        while True:
            try:
                answer = self.session.get(self.url(), timeout=10)
            except requests.RequestException:
                self.next_node()
                time.sleep(0.2)
                continue
            if answer.status_code == 404 and answer.json()["error"]["code"] == "not_found":
                return 0
            if answer.status_code == 200:
                return answer.json()["next_offset"]
            if answer.status_code >= 500:
                self.next_node()
                time.sleep(0.2)
                continue
            raise RuntimeError(f"GET {self.url()}: {answer.status_code} {answer.text}")

    def send(self, offset, body, content_type, attempts=50):
        """Sends one batch at `offset` until it is committed (or was before):
        the channel's next offset."""
        for attempt in range(attempts):
            try:
                answer = self.session.post(
                    self.url("/rows"),
                    params={"offset": offset},
                    data=body,
                    headers={"Content-Type": content_type},
                    timeout=30,
                )
            except requests.RequestException:
                # The answer is lost, not necessarily the rows: try again,
                # with the same offset, through another node.
                self.next_node()
                time.sleep(min(0.1 * 2**attempt, 2))
                continue
            if answer.status_code in (200, 409):
                return answer.json()["next_offset"]
            if answer.status_code in (429, 503) or answer.status_code >= 500:
                self.next_node()
                time.sleep(min(0.1 * 2**attempt, 2))
                continue
            # 400 (a row that does not fit, a gap), 403, 404, 413: retrying
            # the same request cannot help.
            raise RuntimeError(f"POST offset {offset}: {answer.status_code} {answer.text}")
        raise RuntimeError(f"POST offset {offset}: no answer after {attempts} attempts")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", action="append", required=True,
                        help="a node's HTTP address (repeat for more nodes)")
    parser.add_argument("--table", required=True, help="schema.table")
    parser.add_argument("--channel", required=True)
    parser.add_argument("--rows", type=int, required=True,
                        help="the source's rows (0 .. rows); those before next_offset are skipped")
    parser.add_argument("--batch", type=int, default=10_000, help="rows per request")
    parser.add_argument("--arrow", action="store_true", help="send Arrow IPC instead of NDJSON")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--token")
    parser.add_argument("--ca", help="CA file to verify an https node with")
    args = parser.parse_args()

    auth = (args.user, args.password) if args.user else None
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    producer = Producer(args.url, args.table, args.channel, auth, headers, args.ca or True)
    encode = arrow if args.arrow else ndjson
    offset = producer.next_offset()
    print(f"resuming at offset {offset}", file=sys.stderr)
    started = time.monotonic()
    while offset < args.rows:
        count = min(args.batch, args.rows - offset)
        body, content_type = encode(rows_from(offset, count))
        offset = producer.send(offset, body, content_type)
    elapsed = time.monotonic() - started
    print(json.dumps({"next_offset": offset, "seconds": round(elapsed, 3)}))


if __name__ == "__main__":
    main()
