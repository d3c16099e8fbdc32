"""schemathesis hooks for scripts/api-check.

One thing is forgiven, and only that: a request whose body is not valid UTF-8
is refused by cargo-lambda's local HTTP front with its own 500 problem document
(`"type":"https://httpstatuses.com/500"`, text/plain) before any Lambda event
exists. The function never sees it. On AWS, Function URLs and API Gateway hand
such a body over base64-encoded, and the function answers 400; the Rust test
`tests/lambda_events.rs::a_body_that_is_not_utf8_is_a_400` covers that path.
"""
import schemathesis


def _not_utf8(body):
    if isinstance(body, (bytes, bytearray)):
        try:
            bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False


@schemathesis.hook
def filter_failure(context, failure, case, response):
    emulator_refusal = response is not None and "httpstatuses.com" in (response.text or "")
    return not (emulator_refusal and _not_utf8(case.body))
