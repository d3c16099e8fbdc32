"""What a user would write instead of this project: the same endpoint's work in
plain Python and boto3. It reads the offer, the settings and the contacts,
sends every email (SES v2) and SMS (SNS) through a pool of 16 threads, and
stores one event at the end (one PutItem). No ledger, no idempotency, no rates.

Used by scripts/compare.py, in the same session, against the same moto and the
same latency provider as the project.
"""
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config


class Plain:
    def __init__(self, table, sender, threads=16):
        cfg = Config(max_pool_connections=threads * 2, retries={"max_attempts": 3, "mode": "standard"})
        self.ddb = boto3.client("dynamodb", config=cfg)
        self.ses = boto3.client("sesv2", config=cfg)
        self.sns = boto3.client("sns", config=cfg)
        self.table = table
        self.sender = sender
        self.pool = ThreadPoolExecutor(max_workers=threads)

    def notify(self, org, offer_id):
        pk = {"S": f"ORG#{org}"}
        offer = self.ddb.get_item(TableName=self.table, Key={"pk": pk, "sk": {"S": f"OFFER#{offer_id}"}})["Item"]
        settings = self.ddb.get_item(TableName=self.table, Key={"pk": pk, "sk": {"S": "NOTIFICATION_CONFIG"}}).get("Item", {})
        channels = [c["S"] for c in settings.get("channels", {}).get("L", [])] or ["EMAIL"]
        ids = [v["S"] for v in offer["contactIds"]["L"]]
        contacts = []
        for i in range(0, len(ids), 100):
            keys = [{"pk": pk, "sk": {"S": f"CONTACT#{c}"}} for c in ids[i:i + 100]]
            request = {self.table: {"Keys": keys}}
            while request:
                out = self.ddb.batch_get_item(RequestItems=request)
                contacts.extend(out["Responses"].get(self.table, []))
                request = out.get("UnprocessedKeys") or None
        name = offer.get("name", {}).get("S", "")
        jobs = []
        for c in contacts:
            if "EMAIL" in channels and "emailAddress" in c:
                jobs.append(("EMAIL", c["id"]["S"], c["emailAddress"]["S"]))
            phone = c.get("info", {}).get("M", {}).get("phoneNumber", {}).get("S")
            if "SMS" in channels and phone:
                jobs.append(("SMS", c["id"]["S"], phone))

        def send(job):
            channel, contact, to = job
            try:
                if channel == "EMAIL":
                    r = self.ses.send_email(
                        FromEmailAddress=self.sender,
                        Destination={"ToAddresses": [to]},
                        Content={"Simple": {
                            "Subject": {"Data": f"Private offer on AWS Marketplace: {name}"},
                            "Body": {"Text": {"Data": f"A private offer is waiting for you: {name}"},
                                     "Html": {"Data": f"<p>A private offer is waiting for you: {name}</p>"}},
                        }},
                    )
                else:
                    r = self.sns.publish(
                        PhoneNumber=to, Message=f"Private offer: {name}",
                        MessageAttributes={"AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"}},
                    )
                return channel, contact, "SENT", r["MessageId"]
            except Exception as e:  # one refusal must not stop the others
                return channel, contact, "FAILED", type(e).__name__

        results = list(self.pool.map(send, jobs))
        sent = sum(1 for r in results if r[2] == "SENT")
        event_id = str(uuid.uuid4())
        self.ddb.put_item(TableName=self.table, Item={
            "pk": pk, "sk": {"S": f"EVENT#{event_id}"}, "eventID": {"S": event_id},
            "organizationID": {"S": org}, "entityID": {"S": offer_id},
            "eventStatus": {"S": "DONE" if sent == len(results) else "FAILED"},
            "contactIds": {"L": [{"S": c["id"]["S"]} for c in contacts]},
            "info": {"S": json.dumps({"sent": sent, "deliveries": len(results)})},
        })
        return len(results), sent


def timed(plain, org, offer):
    t = time.perf_counter()
    sends, sent = plain.notify(org, offer)
    return (time.perf_counter() - t) * 1000.0, sends, sent
