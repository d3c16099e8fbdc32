"""Seeds the chat organisation (tests/fixtures/chat-org.json: Slack, Teams and
a signed webhook) into a local table, and creates its targets' secrets in
Secrets Manager (moto), pointing at the local receivers.

usage: seed_chat.py ENDPOINT TABLE SECRET_PREFIX SLACK_PORT TEAMS_PORT WEBHOOK_PORT SIGNING_SECRET
"""
import json
import pathlib
import sys

import boto3

endpoint, table_name, prefix, slack, teams, hook, signing = sys.argv[1:8]
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
fixture = json.loads((pathlib.Path(__file__).parent.parent / "tests/fixtures/chat-org.json").read_text())
table = boto3.resource("dynamodb", **kw).Table(table_name)
with table.batch_writer() as batch:
    for item in fixture["items"]:
        batch.put_item(Item=item)
sm = boto3.client("secretsmanager", **kw)
for name, value in [
    ("sales-alerts", f"http://127.0.0.1:{slack}/services/T0DEMO/B0DEMO/demo-hook-token"),
    ("teams-deals", f"http://127.0.0.1:{teams}/workflows/demo/triggers/manual/paths/invoke?sig=demo-sig"),
    ("erp", json.dumps({"url": f"http://127.0.0.1:{hook}/hooks/notify", "signingSecret": signing})),
]:
    sm.create_secret(Name=f"{prefix}org-chat/{name}", SecretString=value)
