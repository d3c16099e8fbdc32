"""What one DynamoDB call costs moto, by call and by item, as seen from boto3.

BENCHMARKS.md uses it to say why the work queue's run time on moto follows
the bytes moto copies, not the number of calls. Prints a table.
  .venv/bin/python scripts/moto_costs.py http://127.0.0.1:PORT
"""

import sys
import time

import boto3

ROUNDS = 40


def main(endpoint: str) -> None:
    d = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="test", aws_secret_access_key="test")
    table = f"costs-{int(time.time() * 1000)}"
    d.create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}])

    def entry(i: int, ledger: bool) -> dict:
        item = {"pk": {"S": "ORG#org"}, "sk": {"S": f"DELIVERY#ev#EMAIL#c{i}"}}
        if ledger:  # the attributes of an outcome in the ledger
            item.update({"channel": {"S": "EMAIL"}, "contactId": {"S": f"c{i}"}, "status": {"S": "SENT"},
                         "time": {"S": "2026-11-30T10:00:00.123Z"},
                         "messageId": {"S": "0100018c-aaaa-bbbb-cccc-dddddddddddd-000000"},
                         "batch": {"S": "b1"}, "eventID": {"S": "ev"}, "organizationID": {"S": "org"}})
        return {"PutRequest": {"Item": item}}

    def timed(call) -> float:
        start = time.perf_counter()
        for r in range(ROUNDS):
            call(r)
        return (time.perf_counter() - start) / ROUNDS * 1000

    n = iter(range(10**9))
    print("| call | ms a call |\n|---|---:|")
    for ledger in (False, True):
        for size in (1, 25):
            ms = timed(lambda r: d.batch_write_item(
                RequestItems={table: [entry(next(n), ledger) for _ in range(size)]}))
            print(f"| BatchWriteItem of {size} {'ledger-sized' if ledger else 'key-only'} items | {ms:.1f} |")
    # The 400 outcomes of a 200-contact notification (EMAIL and SMS), as the
    # ledger writes them (one item each, 25 a call) and as two layouts this
    # project does not use would: one item per 100 outcomes, listing them
    # (what the per-recipient API and SES's reports would then have to read
    # and copy out), and the same as one string attribute, each written
    # once and whole (a lower bound: outcomes come in as the sends end). The
    # first line is the outcomes' share of issue 11's "store floor", one call
    # at a time here; BENCHMARKS.md weighs the others. Times are boto3's
    # wall time, client included.
    def outcome(i: int) -> dict:
        return {"key": {"S": f"EMAIL#c{i}"}, "status": {"S": "SENT"}, "time": {"S": "2026-11-30T10:00:00.123Z"},
                "messageId": {"S": "0100018c-aaaa-bbbb-cccc-dddddddddddd-000000"}}

    def sheet(i: int, as_string: bool) -> dict:
        item = {"pk": {"S": "ORG#org"}, "sk": {"S": f"DELIVERY#ev#~OUTCOMES#{i}"}}
        if as_string:
            item["outcomes"] = {"S": "\n".join("|".join(v["S"] for v in outcome(j).values()) for j in range(100))}
        else:
            item["outcomes"] = {"L": [{"M": outcome(j)} for j in range(100)]}
        return {"PutRequest": {"Item": item}}

    def outcomes_400(layout: str) -> None:
        if layout == "items":
            for _ in range(16):
                d.batch_write_item(RequestItems={table: [entry(next(n), True) for _ in range(25)]})
        else:
            d.batch_write_item(RequestItems={table: [sheet(next(n), layout == "string") for _ in range(4)]})

    for layout, label in (("items", "one ledger-sized item each, 25 a call (16 calls)"),
                          ("list", "4 items listing 100 each (1 call)"),
                          ("string", "4 items holding 100 each in one string (1 call)")):
        ms = timed(lambda r: outcomes_400(layout))
        print(f"| 400 outcomes, {label} | {ms:.1f} |")
    key = {"pk": {"S": "ORG#org"}, "sk": {"S": "DELIVERY#ev#EMAIL#c1"}}
    print(f"| GetItem of one small item | {timed(lambda r: d.get_item(TableName=table, Key=key)):.1f} |")
    ids = [{"S": f"c{i}"} for i in range(1000)]
    d.put_item(TableName=table, Item={"pk": {"S": "ORG#org"}, "sk": {"S": "OFFER#big"}, "name": {"S": "Big"},
                                      "contactIds": {"L": ids}})
    big = {"pk": {"S": "ORG#org"}, "sk": {"S": "OFFER#big"}}
    ms = timed(lambda r: d.get_item(TableName=table, Key=big, ProjectionExpression="#n",
                                    ExpressionAttributeNames={"#n": "name"}))
    print(f"| GetItem projecting one attribute of an item listing 1,000 contacts | {ms:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1])
