"""Creates the table of docs/contract.md on a local stand-in and seeds the demo
organisations from tests/fixtures/demo-org.json and brand-org.json (the same
data the tests use),
then verifies the sender identity in SES and creates the org's SNS topic.

usage: seed.py ENDPOINT TABLE SENDER
"""
import json
import pathlib
import sys

import boto3

endpoint, table_name, sender = sys.argv[1:4]
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")

ddb = boto3.resource("dynamodb", **kw)
table = ddb.create_table(
    TableName=table_name,
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    AttributeDefinitions=[
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "sk", "AttributeType": "S"},
        {"AttributeName": "pendingIndex", "AttributeType": "S"},
        {"AttributeName": "resumeAt", "AttributeType": "N"},
        {"AttributeName": "entityIndex", "AttributeType": "S"},
        {"AttributeName": "smsMessageId", "AttributeType": "S"},
    ],
    # The sweeper's index over PENDING events and the read API's index of
    # events by entity, as template.yaml declares them.
    GlobalSecondaryIndexes=[{
        "IndexName": "PendingEvents",
        "KeySchema": [{"AttributeName": "pendingIndex", "KeyType": "HASH"}, {"AttributeName": "resumeAt", "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["pendingSince"]},
    }, {
        # The read API's events of one entity.
        "IndexName": "EntityEvents",
        "KeySchema": [{"AttributeName": "entityIndex", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "ALL"},
    }, {
        # SMS delivery logs find their ledger entry by message ID.
        "IndexName": "ProviderMessages",
        "KeySchema": [{"AttributeName": "smsMessageId", "KeyType": "HASH"}],
        "Projection": {"ProjectionType": "KEYS_ONLY"},
    }],
    BillingMode="PAY_PER_REQUEST",
)
fixtures = pathlib.Path(__file__).parent.parent / "tests/fixtures"
# org-demo (the built-in wording) and org-brand (its own templates).
items = [i for f in ("demo-org.json", "brand-org.json") for i in json.loads((fixtures / f).read_text())["items"]]
with table.batch_writer() as batch:
    for item in items:
        batch.put_item(Item=item)

boto3.client("sesv2", **kw).create_email_identity(EmailIdentity=sender)
boto3.client("sns", **kw).create_topic(Name="notify-org-demo")
print(f"seeded table {table_name}: {len(items)} items (org-demo: offer-demo with c-ann, c-bob, c-cat; org-brand: offer-brand with c-eve, c-fay, its own templates)")
