"""Checks the promises template.yaml makes beyond what cfn-lint can see: the
settings a deployed stack starts with. Each check names the README promise
(or issue item) it keeps; a failing one exits 1 with the reason.

usage: check-template.py [template.yaml]
"""
import sys

from cfnlint.decode import cfn_yaml

path = sys.argv[1] if len(sys.argv) > 1 else "template.yaml"
t = cfn_yaml.load(path)
res = t["Resources"]
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def props(name):
    return res[name]["Properties"]


def env(fn):
    return props(fn)["Environment"]["Variables"]


def statements(fn):
    out = []
    for policy in props(fn).get("Policies", []):
        out.extend(policy.get("Statement", []))
    return out


def as_list(v):
    return v if isinstance(v, list) else [v]


api, worker = "NotifyFunction", "WorkerFunction"

# The SSRF guard's test-only allowance appears nowhere in the stack.
check("NOTIFY_TEST_ONLY_LOCAL_TARGETS" not in open(path).read(), "the template must never mention NOTIFY_TEST_ONLY_LOCAL_TARGETS")

# Fail closed: the HTTP API's function never serves a request without its authorizer.
check("http" not in str(env(api).get("ALLOW_WITHOUT_AUTHORIZER", "")), "the API function must never allow http without an authorizer")
check("ALLOW_WITHOUT_AUTHORIZER" not in env(worker), "the worker takes no direct invocation")
check(env(api).get("INPUTS") == "http,direct,eventbridge,sns,logs", "the API function takes only what its triggers send")
check(env(worker).get("INPUTS") == "sqs,schedule", "the worker takes only queue messages and the schedule")
check(env(api).get("ORG_CLAIM") == {"Ref": "OrgClaim"}, "ORG_CLAIM comes from the OrgClaim parameter")
check("OrgJwt" in str(props("NotifyApi")["Auth"]), "the HTTP API has a JWT authorizer")
check(props("NotifyApi")["Auth"].get("DefaultAuthorizer") == "OrgJwt", "every route uses the authorizer")

# EventBridge: a source filter, a retry policy and a DLQ on the rule's target.
rule = props(api)["Events"]["NotifyFromEventBridge"]["Properties"]
check(rule["Pattern"].get("source") == {"Ref": "EventSources"}, "the rule filters on source")
check("RetryPolicy" in rule and "DeadLetterConfig" in rule, "the rule's target has a retry policy and a DLQ")
check(env(api).get("EVENT_SOURCES") is not None, "the function checks the source too")
check("NotificationsTopic" not in res, "no topic shared by every organisation")

# Topics SES and CloudWatch publish to are encrypted with a key they may use.
key_policy = str(props("TopicKey")["KeyPolicy"])
check("cloudwatch.amazonaws.com" in key_policy and "ses.amazonaws.com" in key_policy, "TopicKey grants CloudWatch and SES")
for topic in ["AlarmTopic", "SesEventsTopic"]:
    check(props(topic).get("KmsMasterKeyId") == {"Ref": "TopicKey"}, f"{topic} uses TopicKey (alias/aws/sns cannot grant AWS services)")

# SNS: SMS works (Publish on anything but a topic), topics only the organisations'
# (OrgTopicPrefix in this account and region), never the stack's own.
for fn in [api, worker]:
    st = statements(fn)
    publish = [s for s in st if s.get("Action") == "sns:Publish"]
    allows = [s for s in publish if s.get("Effect") == "Allow"]
    denied = str([s for s in publish if s.get("Effect") == "Deny"])
    check("AlarmTopic" in denied and "SesEventsTopic" in denied, f"{fn} may not publish to the stack's own topics")
    check(all(s.get("Resource") != "*" for s in allows), f"{fn} may not publish to any topic at all")
    check(any("${OrgTopicPrefix}*" in str(s.get("Resource")) and "${AWS::AccountId}" in str(s.get("Resource")) for s in allows),
          f"{fn} publishes to this account's organisation topics only")
    check(any("arn:${AWS::Partition}:sns:*:*:*" in str(s.get("NotResource")) for s in allows), f"{fn} may send SMS (NotResource: any topic)")
    check(env(fn).get("TOPIC_ARN_PREFIX") is not None, f"{fn} checks organisation topics against TOPIC_ARN_PREFIX")
    # Chat and webhook targets: secrets under the prefix only; the SSRF guard's
    # test-only allowance is never set by the stack.
    check("NOTIFY_TEST_ONLY_LOCAL_TARGETS" not in str(env(fn)), f"{fn} must never set NOTIFY_TEST_ONLY_LOCAL_TARGETS (tests only)")
    check(env(fn).get("SECRET_PREFIX") == {"Ref": "TargetSecretPrefix"}, f"{fn} reads targets under SECRET_PREFIX")
    secrets = [s for s in st if "secretsmanager" in str(s.get("Action"))]
    check(len(secrets) == 1 and secrets[0].get("Action") == "secretsmanager:GetSecretValue"
          and "secret:${TargetSecretPrefix}*" in str(secrets[0].get("Resource")),
          f"{fn} may read only the targets' secrets (GetSecretValue on the prefix)")
    # SES: identity/* (the sandbox checks the recipient's identity too), sender pinned.
    ses = [s for s in st if s.get("Action") == "ses:SendEmail"]
    check(ses and "identity/*" in str(ses[0]["Resource"]), f"{fn}: ses:SendEmail on identity/*")
    check(ses and "ses:FromAddress" in str(ses[0].get("Condition")), f"{fn}: the sender is pinned by ses:FromAddress")
    # REPORT lines (init duration, memory) are INFO.
    check(props(fn)["LoggingConfig"].get("SystemLogLevel") in ("INFO", "DEBUG"), f"{fn} keeps the platform's REPORT lines")
    # Rates shared across every instance of both functions.
    check(env(fn).get("RATE_SPLIT") == {"Fn::Sub": "${ApiReservedConcurrency}+${WorkerMaxConcurrency}"}, f"{fn}: RATE_SPLIT covers every instance")
check(props(api).get("ReservedConcurrentExecutions") == {"Ref": "ApiReservedConcurrency"}, "the API function's instances are bounded")
check("DefaultRouteSettings" in props("NotifyApi"), "the HTTP API stage throttles")
check("AccessLogSettings" in props("NotifyApi"), "the HTTP API has an access log")
check("$context.identity.sourceIp" in props("NotifyApi")["AccessLogSettings"]["Format"], "the access log names the caller's IP")

# The sweeper: a schedule on the worker, the index it reads, an alarm on what it reports.
sweep = props(worker)["Events"].get("Sweep", {})
check(sweep.get("Type") == "Schedule", "the worker runs the sweeper on a schedule")
gsi = [g for g in props("NotifyTable").get("GlobalSecondaryIndexes", []) if g["IndexName"] == "PendingEvents"]
check(gsi and [k["AttributeName"] for k in gsi[0]["KeySchema"]] == ["pendingIndex", "resumeAt"], "the PendingEvents index")
check(env(worker).get("WORK_QUEUE_URL") is not None, "the sweeper queues what it resumes")
check(props("OldestPendingEventAlarm")["MetricName"] == "OldestPendingEventAge", "an alarm on the oldest PENDING event")
check("DeliveriesUnconfirmed" in str(props("UnconfirmedDeliveriesAlarm")), "an alarm on unconfirmed deliveries")
check(any("index/PendingEvents" in str(s.get("Resource")) for s in statements(worker)), "the worker may query the index")

# Provider feedback: the configuration set reports what happened to each email.
dest = [r for r in t["Resources"].values() if r.get("Type") == "AWS::SES::ConfigurationSetEventDestination"]
kinds = set(dest[0]["Properties"]["EventDestination"]["MatchingEventTypes"]) if dest else set()
check({"delivery", "bounce", "complaint", "reject", "open"} <= kinds, "SES reports deliveries, bounces, complaints, rejects and opens to the function")

# SMS delivery logs: both log groups subscribed, the ledger index, the role SNS needs.
subs = {str(e["Properties"].get("LogGroupName")) for e in props(api)["Events"].values() if e["Type"] == "CloudWatchLogs"}
check({"{'Ref': 'SmsDeliveryLogGroup'}", "{'Ref': 'SmsFailureLogGroup'}"} <= subs, "the function subscribes to both SMS delivery log groups")
check("logs" in env(api).get("INPUTS", ""), "the API function takes CloudWatch Logs events (INPUTS)")
gsi = [g for g in props("NotifyTable").get("GlobalSecondaryIndexes", []) if g["IndexName"] == "ProviderMessages"]
check(gsi and [k["AttributeName"] for k in gsi[0]["KeySchema"]] == ["smsMessageId"], "the ProviderMessages index")
check(any("index/ProviderMessages" in str(s.get("Resource")) for s in statements(api)), "the API function may query the ProviderMessages index")

# The read API: its index (keyed within one organisation), its routes, its IAM.
gsi = [g for g in props("NotifyTable").get("GlobalSecondaryIndexes", []) if g["IndexName"] == "EntityEvents"]
check(gsi and [k["AttributeName"] for k in gsi[0]["KeySchema"]] == ["entityIndex", "sk"], "the EntityEvents index")
paths = {e["Properties"]["Path"] for e in props(api)["Events"].values() if e["Type"] == "HttpApi"}
for p in ["/org/{orgId}/notificationEvent", "/org/{orgId}/notificationEvent/{entityType}/{entityId}",
          "/org/{orgId}/notificationMessage", "/org/{orgId}/notificationMessage/{notificationMessageId}"]:
    check(p in paths, f"the route {p}")
check(any("index/EntityEvents" in str(s.get("Resource")) for s in statements(api)), "the API function may query the EntityEvents index")
check(not any("Scan" in str(s.get("Action")) for fn in (api, worker) for s in statements(fn)), "no function may Scan")

if failures:
    print(f"{path}: {len(failures)} promise(s) broken:")
    for f in failures:
        print(f"  - {f}")
    sys.exit(1)
print(f"{path}: every checked promise holds")
