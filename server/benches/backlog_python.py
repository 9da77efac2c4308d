#!/usr/bin/env python3
"""Backlog consume, steadfast against tansu, read by confluent-kafka (Python).

The `--case backlog` row of `throughput.rs` uses the benchmark's own Rust client. This
script measures the same workload with an independent librdkafka client in a process of
its own: confluent-kafka's Python binding, which bundles its own librdkafka build.

Both servers run as child processes (steadfast's `child_server`, tansu with memory
storage). Each round writes a fresh topic of `--messages` messages of `--size` bytes to
one partition on each server, then reads it from offset 0. Rounds alternate which server
goes first (ABBA). It prints every run, then a table of medians with the CPU seconds per
million messages of the client process and of each server process.

    pip install confluent-kafka
    cargo build --release -p steadfast-server --bin child_server
    python3 server/benches/backlog_python.py \\
        --steadfast target/release/child_server --tansu /path/to/tansu
"""

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

try:
    from confluent_kafka import (
        OFFSET_BEGINNING,
        Consumer,
        KafkaException,
        Producer,
        TopicPartition,
        libversion,
        version,
    )
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError:
    sys.exit("confluent-kafka is missing: run `pip install confluent-kafka`")

START_TIMEOUT_S = 30.0
STALL_TIMEOUT_S = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The settings of `--case backlog` in throughput.rs (see its doc comment): tansu 0.6.0
# sleeps out what is left of fetch.wait.max.ms on every Fetch, so it gets 1 ms.
CONSUMER_SETTINGS = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": False,
    "auto.offset.reset": "earliest",
    "fetch.max.bytes": 1048576,
    "max.partition.fetch.bytes": 1048576,
    "fetch.wait.max.ms": 1,
    "queued.min.messages": 100000,
    "queued.max.messages.kbytes": 16384,
    "fetch.queue.backoff.ms": 1,
}

PRODUCER_SETTINGS = {
    "acks": "1",
    "compression.type": "none",
    "linger.ms": 5,
    "batch.size": 1000000,
    "batch.num.messages": 1000000,
    "message.max.bytes": 16000000,
    "queue.buffering.max.messages": 1000000,
    "queue.buffering.max.kbytes": 262144,
    "enable.idempotence": False,
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, child, name, log_path):
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if child.poll() is not None:
                sys.exit(f"{name} exited at start with status {child.returncode}; "
                         f"its output: {log_path}")
            if time.monotonic() > deadline:
                child.kill()
                sys.exit(f"{name} did not listen on port {port} in {START_TIMEOUT_S} s; "
                         f"its output: {log_path}")
            time.sleep(0.02)


class Server:
    """A child server process; `bootstrap` is its address."""

    def __init__(self, name, child, bootstrap, cleanup=None):
        self.name = name
        self.child = child
        self.bootstrap = bootstrap
        self._cleanup = cleanup

    def cpu_seconds(self):
        with open(f"/proc/{self.child.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15; fields[0] here is field 3.
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self):
        self.child.terminate()
        try:
            self.child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.child.kill()
        if self._cleanup:
            self._cleanup()


def child_env():
    env = dict(os.environ)
    # An allocator preloaded into the client, or glibc malloc settings given to it, are the
    # client's, not the servers'.
    env.pop("LD_PRELOAD", None)
    env.pop("GLIBC_TUNABLES", None)
    return env


def start_steadfast(binary):
    data_dir = tempfile.mkdtemp(prefix="steadfast-bench-py-")
    child = subprocess.Popen(
        [binary, "--data-dir", data_dir],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=child_env(),
        text=True,
    )
    line = child.stdout.readline().strip()
    if not line.startswith("listening "):
        child.kill()
        sys.exit(f"child_server did not start; it printed {line!r}")
    address = line.split(" ", 1)[1]
    return Server(
        "steadfast",
        child,
        address,
        cleanup=lambda: shutil.rmtree(data_dir, ignore_errors=True),
    )


def start_tansu(binary):
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path = os.path.join(tempfile.gettempdir(), f"steadfast-bench-py-tansu-{port}.log")
    log = open(log_path, "w")
    child = subprocess.Popen(
        [binary, "broker", "--storage-engine", "memory://tansu/",
         "--listener-url", url, "--advertised-listener-url", url],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env=child_env(),
    )
    try:
        wait_for_port(port, child, "tansu", log_path)
    finally:
        # The child holds its own descriptor; this one is only for handing it over.
        log.close()
    return Server("tansu", child, f"127.0.0.1:{port}")


def create_topic(bootstrap, topic):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(timeout=30)


def produce(bootstrap, topic, messages, size):
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_SETTINGS})
    failures = []

    def on_delivery(err, _msg):
        if err is not None:
            failures.append(err)

    payload = b"x" * size
    for _ in range(messages):
        while True:
            try:
                producer.produce(topic, payload, partition=0, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
    remaining = producer.flush(120)
    if remaining or failures:
        sys.exit(f"produce to {topic}: {remaining} undelivered, first error {failures[:1]}")


class FetchStats:
    """What librdkafka's statistics say about the fetches of one consume run."""

    # Statistics interval: short, for several windows in a run of under a second.
    INTERVAL_MS = 50

    def __init__(self, topic):
        self.topic = topic
        self.rtt_avg_us = []
        self.queue_messages = []
        self.fetch_requests = 0

    def on_stats(self, text):
        stats = json.loads(text)
        for broker in stats["brokers"].values():
            if broker.get("nodeid", -1) < 0:
                continue
            if broker["rtt"]["cnt"] > 0:
                self.rtt_avg_us.append(broker["rtt"]["avg"])
            self.fetch_requests = max(self.fetch_requests, broker["req"].get("Fetch", 0))
        partition = stats["topics"].get(self.topic, {}).get("partitions", {}).get("0")
        if partition is not None:
            self.queue_messages.append(partition["fetchq_cnt"])

    def summary(self):
        if not self.rtt_avg_us:
            return "librdkafka stats: none in this run"
        rtt, queue = self.rtt_avg_us, self.queue_messages or [0]
        return (f"fetch round trip median {statistics.median(rtt):,.0f} µs "
                f"({min(rtt):,}-{max(rtt):,}; averages per {self.INTERVAL_MS} ms window), "
                f"prefetch queue median {statistics.median(queue):,.0f} messages "
                f"({min(queue):,}-{max(queue):,}), {self.fetch_requests} Fetch requests")


def consume(bootstrap, topic, messages, size, overrides, fetch_stats=None):
    settings = {
        "bootstrap.servers": bootstrap,
        "group.id": f"{topic}-reader",
        **CONSUMER_SETTINGS,
        **overrides,
    }
    if fetch_stats is not None:
        settings["statistics.interval.ms"] = FetchStats.INTERVAL_MS
        settings["stats_cb"] = fetch_stats.on_stats
    consumer = Consumer(settings)
    consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    received = payload_bytes = 0
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    start = last_progress = time.perf_counter()
    while received < messages:
        batch = consumer.consume(num_messages=10000, timeout=0.1)
        if not batch:
            if time.perf_counter() - last_progress > STALL_TIMEOUT_S:
                sys.exit(f"no message for {STALL_TIMEOUT_S} s ({received} of {messages} in)")
            continue
        last_progress = time.perf_counter()
        for message in batch:
            if message.error() is not None:
                raise KafkaException(message.error())
            payload_bytes += len(message.value())
        received += len(batch)
    elapsed = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    consumer.close()
    if received != messages or payload_bytes != messages * size:
        sys.exit(f"consumed {received} messages / {payload_bytes} B, expected {messages}")
    client_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (
        cpu_after.ru_stime - cpu_before.ru_stime)
    return elapsed, client_cpu


def run_once(server, args, overrides):
    topic = f"backlog-{uuid.uuid4().hex[:12]}"
    create_topic(server.bootstrap, topic)
    produce(server.bootstrap, topic, args.messages, args.size)
    server_cpu_before = server.cpu_seconds()
    fetch_stats = FetchStats(topic) if args.stats else None
    elapsed, client_cpu = consume(
        server.bootstrap, topic, args.messages, args.size, overrides, fetch_stats)
    server_cpu = server.cpu_seconds() - server_cpu_before
    rate = args.messages / elapsed
    per_million = 1e6 / args.messages
    return {
        "rate": rate,
        "elapsed": elapsed,
        "client_cpu": client_cpu * per_million,
        "server_cpu": server_cpu * per_million,
        "fetch_stats": fetch_stats,
    }


def parse_overrides(pairs):
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"--consumer-set expects KEY=VALUE, got {pair!r}")
        overrides[key] = value
    return overrides


def span(values, fmt):
    return f"{fmt(min(values))}-{fmt(max(values))}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steadfast", required=True, help="path of the child_server binary")
    parser.add_argument("--tansu", required=True, help="path of the tansu binary")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4, help="even: each server leads half")
    parser.add_argument("--consumer-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a consumer setting over the defaults (repeatable)")
    parser.add_argument("--stats", action="store_true",
                        help="print librdkafka's view of each run: fetch round trips, "
                             "prefetch queue depth, Fetch requests (statistics every 50 ms; "
                             "the callbacks cost the client a little)")
    args = parser.parse_args()
    overrides = parse_overrides(args.consumer_set)
    for flag, path in (("--steadfast", args.steadfast), ("--tansu", args.tansu)):
        if not os.access(path, os.X_OK):
            sys.exit(f"{flag} {path}: not an executable file")

    binding = version()
    binding = binding[0] if isinstance(binding, tuple) else binding
    print(f"client: confluent-kafka {binding}, librdkafka {libversion()[0]} (glibc malloc "
          f"unless preloaded), "
          f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '(none)')}")
    print(f"consumer settings: {dict(CONSUMER_SETTINGS, **overrides)}")
    servers = []
    results = {"steadfast": [], "tansu": []}
    try:
        servers.append(start_steadfast(args.steadfast))
        servers.append(start_tansu(args.tansu))
        for round_index in range(args.rounds):
            order = servers if round_index % 2 == 0 else list(reversed(servers))
            for server in order:
                r = run_once(server, args, overrides)
                results[server.name].append(r)
                print(f"  run {round_index + 1} {server.name:<9} {r['rate']:>12,.0f} msg/s "
                      f"({r['elapsed']:.2f} s) client CPU {r['client_cpu']:.2f} s/M, "
                      f"server CPU {r['server_cpu']:.2f} s/M", flush=True)
                if r["fetch_stats"] is not None:
                    print(f"        {r['fetch_stats'].summary()}", flush=True)
            ratio = results["steadfast"][-1]["rate"] / results["tansu"][-1]["rate"]
            print(f"  run {round_index + 1} steadfast/tansu: {ratio:.2f}", flush=True)
    finally:
        for server in servers:
            server.stop()

    def median_rate(name):
        return statistics.median(r["rate"] for r in results[name])

    ratios = [a["rate"] / b["rate"] for a, b in zip(results["steadfast"], results["tansu"])]
    print()
    print(f"backlog consume, {args.messages:,} x {args.size} B, 1 partition, "
          f"{args.rounds} rounds (medians; ranges of CPU seconds per million messages)")
    print()
    print("| server | msg/s | client CPU s/M | server CPU s/M |")
    print("| --- | --- | --- | --- |")
    for name in ("steadfast", "tansu"):
        rs = results[name]
        print(f"| {name} | {median_rate(name):,.0f} | "
              f"{span([r['client_cpu'] for r in rs], '{:.2f}'.format)} | "
              f"{span([r['server_cpu'] for r in rs], '{:.2f}'.format)} |")
    print()
    print(f"steadfast/tansu: {median_rate('steadfast') / median_rate('tansu'):.2f} "
          f"(rounds {span(ratios, '{:.2f}'.format)})")


if __name__ == "__main__":
    main()
