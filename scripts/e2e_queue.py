"""End to end through the work queue on the local stand-ins, timed.

Seeds org-bulk with offer-bulk and N contacts (each with an email address and a
phone number; channels EMAIL and SMS), creates the work queue and its DLQ in
moto, POSTs notifyContacts to the function (under `cargo lambda watch`), then
plays Lambda's SQS poller: W pollers receive up to B messages each, invoke the
function with the SQS event Lambda would send, delete what the answer does not
list in batchItemFailures. Follows the event through the read API alone
(GET .../notificationEvent/OFFER/offer-bulk) until it is DONE or FAILED, then
prints a table and checks what moto recorded.

usage: e2e_queue.py MOTO_URL FUNCTION_PORT TABLE QUEUE_URL N W B
"""
import json
import sys
import threading
import time
import urllib.request

import boto3

moto, port, table_name, queue_url = sys.argv[1:5]
n, pollers, batch_size = (int(x) for x in sys.argv[5:8])
kw = dict(endpoint_url=moto, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
ddb = boto3.resource("dynamodb", **kw).Table(table_name)
sqs = boto3.client("sqs", **kw)

ids = [f"c{i:05d}" for i in range(n)]
with ddb.batch_writer() as w:
    w.put_item(Item={"pk": "ORG#org-bulk", "sk": "OFFER#offer-bulk", "id": "offer-bulk",
                     "organizationID": "org-bulk", "name": "Bulk plan", "status": "PENDING_ACCEPTANCE",
                     "partner": "AWS", "contactIds": ids,
                     "info": {"privateOfferUrl": "https://aws.amazon.com/marketplace/ao/offer-bulk"}})
    w.put_item(Item={"pk": "ORG#org-bulk", "sk": "NOTIFICATION_CONFIG", "organizationID": "org-bulk",
                     "channels": ["EMAIL", "SMS"]})
    for i, c in enumerate(ids):
        w.put_item(Item={"pk": "ORG#org-bulk", "sk": f"CONTACT#{c}", "id": c, "organizationID": "org-bulk",
                         "name": f"Buyer {i}", "emailAddress": f"{c}@buyer.example.com",
                         "info": {"phoneNumber": f"+1206{i:07d}"}})

def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=900) as r:
        return r.status, json.loads(r.read())

base = f"http://127.0.0.1:{port}"
t0 = time.monotonic()
status, event = post(f"{base}/lambda-url/notify-offer-contacts/org/org-bulk/offer/offer-bulk/notifyContacts", [])
t_answer = time.monotonic() - t0
assert status == 200, (status, event)
assert event["eventStatus"] == "PENDING", event["eventStatus"]
event_id = event["eventID"]
queued = event["info"]["queuedDeliveries"]
messages = event["info"]["queueMessages"]

def event_status():
    # Followed through the read API alone, as a caller would: the offer's
    # newest events (GET .../notificationEvent/OFFER/{offerId}).
    url = f"{base}/lambda-url/notify-offer-contacts/org/org-bulk/notificationEvent/OFFER/offer-bulk?limit=5"
    with urllib.request.urlopen(url, timeout=60) as r:
        page = json.loads(r.read())
    item = next(e for e in page["notificationEvents"] if e["eventID"] == event_id)
    return item["eventStatus"], item

invocations = [0]
invoke_seconds = [0.0]
failures = [0]
lock = threading.Lock()
done = threading.Event()

def poller():
    while not done.is_set():
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=batch_size,
                                  MessageSystemAttributeNames=["All"]).get("Messages", [])
        if not got:
            time.sleep(0.05)
            continue
        records = [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                    "attributes": m.get("Attributes", {}), "messageAttributes": {},
                    "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:notify-work",
                    "awsRegion": "us-east-1"} for m in got]
        started = time.monotonic()
        _, answer = post(f"{base}/2015-03-31/functions/notify-offer-contacts/invocations", {"Records": records})
        took = time.monotonic() - started
        failed = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
        ok = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got) if m["MessageId"] not in failed]
        if ok:
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=ok)
        for m in got:
            if m["MessageId"] in failed:
                sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
        with lock:
            invocations[0] += 1
            invoke_seconds[0] += took
            failures[0] += len(failed)

threads = [threading.Thread(target=poller, daemon=True) for _ in range(pollers)]
for t in threads:
    t.start()
while True:
    st, item = event_status()
    if st in ("DONE", "FAILED"):
        break
    if time.monotonic() - t0 > 1800:
        sys.exit(f"event still {st} after 30 min")
    time.sleep(0.5)
t_done = time.monotonic() - t0
done.set()
for t in threads:
    t.join(timeout=30)

data = json.loads(urllib.request.urlopen(f"{moto}/moto-api/data.json").read())
emails = len(data.get("ses", {}).get("Message", []))
sms = len(data.get("sns", {}).get("SMS", []))
summary = item["info"]["deliverySummary"]
print()
mean_ms = invoke_seconds[0] / max(invocations[0], 1) * 1000
print("| contacts | deliveries queued | messages | pollers x batch | invocations | mean invocation | failed messages | HTTP answer | event DONE after | emails sent | SMS sent |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
print(f"| {n} | {queued} | {messages} | {pollers} x {batch_size} | {invocations[0]} | {mean_ms:.0f} ms | {failures[0]} | {t_answer:.2f} s | {t_done:.1f} s | {emails} | {sms} |")
print()
print("event", event_id, "status", st, "summary", json.dumps(summary, default=int))
assert st == "DONE", st
assert emails == n and sms == n, (emails, sms)
assert int(summary["EMAIL"]["sent"]) == n and int(summary["SMS"]["sent"]) == n, summary
