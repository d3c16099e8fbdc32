"""The side-by-side benchmark: this project against what a user would write
instead (scripts/plain_notify.py), in one session, against the same moto
(DynamoDB) and the same latency provider (SES and SNS answered after a fixed
latency), for several offer sizes. Prints a Markdown table.

usage: compare.py MOTO_URL PROVIDER_URL LATENCY_MS RUNNER SIZES...
"""
import json
import math
import os
import statistics
import subprocess
import sys

import boto3

sys.path.insert(0, os.path.dirname(__file__))
from plain_notify import Plain, timed  # noqa: E402

moto, provider, latency_ms, runner = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
sizes = [int(s) for s in sys.argv[5:]] or [20, 200, 2000]
RUNS = int(os.environ.get("COMPARE_RUNS", "3"))
TABLE, SENDER, ORG = "notify-compare", "offers@seller.example.com", "org-cmp"

env = dict(os.environ, AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
           AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
           AWS_ENDPOINT_URL_DYNAMODB=moto, AWS_ENDPOINT_URL_SESV2=provider,
           AWS_ENDPOINT_URL_SNS=provider, TABLE_NAME=TABLE, SENDER_EMAIL=SENDER,
           EMAIL_PER_SECOND="0", SMS_PER_SECOND="0",
           AWS_LAMBDA_LOG_LEVEL=os.environ.get("AWS_LAMBDA_LOG_LEVEL", "warn"))
os.environ.update({k: env[k] for k in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
                                       "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_DYNAMODB",
                                       "AWS_ENDPOINT_URL_SESV2", "AWS_ENDPOINT_URL_SNS")})

ddb = boto3.resource("dynamodb")
table = ddb.create_table(
    TableName=TABLE,
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"},
                          {"AttributeName": "pendingIndex", "AttributeType": "S"},
                          {"AttributeName": "resumeAt", "AttributeType": "N"}],
    GlobalSecondaryIndexes=[{"IndexName": "PendingEvents",
                             "KeySchema": [{"AttributeName": "pendingIndex", "KeyType": "HASH"},
                                           {"AttributeName": "resumeAt", "KeyType": "RANGE"}],
                             "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["pendingSince"]}}],
    BillingMode="PAY_PER_REQUEST")
with table.batch_writer() as w:
    w.put_item(Item={"pk": f"ORG#{ORG}", "sk": "NOTIFICATION_CONFIG", "channels": ["EMAIL", "SMS"]})
    w.put_item(Item={"pk": f"ORG#{ORG}", "sk": "OFFER#offer-warm", "id": "offer-warm", "organizationID": ORG,
                     "name": "Warm-up", "contactIds": ["w-0"]})
    w.put_item(Item={"pk": f"ORG#{ORG}", "sk": "CONTACT#w-0", "id": "w-0", "organizationID": ORG,
                     "emailAddress": "w-0@buyer.example.com", "info": {"phoneNumber": "+12065550000"}})
    for n in sizes:
        ids = [f"c{n}-{i}" for i in range(n)]
        w.put_item(Item={"pk": f"ORG#{ORG}", "sk": f"OFFER#offer-{n}", "id": f"offer-{n}", "organizationID": ORG,
                         "name": "Enterprise plan, 3 years", "partner": "AWS", "status": "PENDING_ACCEPTANCE",
                         "contactIds": ids,
                         "info": {"privateOfferUrl": f"https://aws.amazon.com/marketplace/ao/offer-{n}"}})
        for i, c in enumerate(ids):
            w.put_item(Item={"pk": f"ORG#{ORG}", "sk": f"CONTACT#{c}", "id": c, "organizationID": ORG,
                             "name": f"Buyer {i}", "emailAddress": f"{c}@buyer.example.com",
                             "info": {"phoneNumber": f"+1206{i:07d}"}})

plain = Plain(TABLE, SENDER)
plain.notify(ORG, "offer-warm")  # warm connections, as the project's runner does

print(f"| contacts | sends | plain boto3, 16 threads | this project (defaults, rates unlimited) | faster by | in flight | ideal | project / ideal | store floor | faster by, at most | store busy |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in sizes:
    p = [timed(plain, ORG, f"offer-{n}") for _ in range(RUNS)]
    plain_ms = statistics.median(t for t, _, _ in p)
    sends = p[0][1]
    assert all(sent == sends for _, s, sent in p), "the plain implementation sent everything"
    out = subprocess.run([runner, ORG, f"offer-{n}", str(RUNS)], env=env, capture_output=True, text=True, check=True)
    # The runner prints one JSON line per run; its log lines (JSON too, at
    # AWS_LAMBDA_LOG_LEVEL=info or below) share stdout, as in Lambda.
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    runs = [r for r in lines if "io_ms" in r]
    if os.environ.get("COMPARE_LOG"):
        with open(os.environ["COMPARE_LOG"], "a") as log:
            log.write(out.stderr)
            log.writelines(json.dumps(r) + "\n" for r in lines if "io_ms" not in r)
    for r in runs:
        assert r["status"] == "DONE", r
    ms = statistics.median(r["ms"] for r in runs)
    io = statistics.median(r["io_ms"] for r in runs)
    # What the store alone takes for the reads, the event and one outcome per
    # send (the per-recipient records): the project cannot finish sooner, so
    # plain / floor is the most it can be faster by on this store.
    floor = io + statistics.median(r["outcomes_ms"] for r in runs)
    inflight = runs[0]["concurrency"]
    # The share of the project's run during which moto (threads taking turns
    # under Python's global lock) was at work: near 100%, the run waits on
    # the store, not on itself.
    busy = [r["store_cpu_ms"] / r["ms"] for r in runs if r.get("store_cpu_ms") is not None]
    busy = f"{statistics.median(busy):.0%}" if busy else "-"
    ideal = math.ceil(sends / inflight) * latency_ms + io
    print(f"| {n} | {sends} | {plain_ms / 1000:.3f} s | {ms / 1000:.3f} s | {plain_ms / ms:.2f}x | {inflight} | "
          f"{ideal / 1000:.3f} s ({math.ceil(sends / inflight)} x {latency_ms:.0f} ms + {io:.0f} ms reads/writes) | {ms / ideal:.2f} | "
          f"{floor / 1000:.3f} s | {plain_ms / floor:.2f}x | {busy} |")
    sys.stdout.flush()
