//! The work queue on SQS: `SendMessageBatch`, at most 10 entries a call,
//! retrying the entries SQS failed on its side with backoff.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use futures::future::BoxFuture;

use crate::ports::{SendError, WorkBatch, WorkQueue};

/// SQS takes at most 10 entries per `SendMessageBatch`.
pub const SEND_BATCH_MAX: usize = 10;
/// Calls per chunk at most (the first and the retries of failed entries).
const ATTEMPTS: u32 = 4;

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
}

impl SqsQueue {
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }

    /// Sends up to 10 messages; answers, in order, each one's result.
    async fn send_chunk(&self, chunk: &[WorkBatch]) -> Vec<Result<(), SendError>> {
        let mut results: Vec<Option<Result<(), SendError>>> = vec![None; chunk.len()];
        let bodies: Vec<Result<String, serde_json::Error>> =
            chunk.iter().map(serde_json::to_string).collect();
        for (i, body) in bodies.iter().enumerate() {
            if body.is_err() {
                results[i] = Some(Err(refusal(
                    "InvalidMessage",
                    "the message could not be encoded",
                    true,
                )));
            }
        }
        for attempt in 0..ATTEMPTS {
            let pending: Vec<usize> = (0..chunk.len()).filter(|i| results[*i].is_none()).collect();
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
            let entries: Vec<SendMessageBatchRequestEntry> = pending
                .iter()
                .filter_map(|&i| {
                    SendMessageBatchRequestEntry::builder()
                        // Entry IDs only need to be unique within the call.
                        .id(i.to_string())
                        .message_body(bodies[i].as_deref().ok()?)
                        .set_delay_seconds(delay_seconds(&chunk[i]))
                        .build()
                        .ok()
                })
                .collect();
            let last = attempt + 1 == ATTEMPTS;
            match self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => {
                    for ok in out.successful() {
                        if let Some(i) = ok.id().parse::<usize>().ok().filter(|i| *i < chunk.len())
                        {
                            results[i] = Some(Ok(()));
                        }
                    }
                    for failed in out.failed() {
                        let Some(i) = failed
                            .id()
                            .parse::<usize>()
                            .ok()
                            .filter(|i| *i < chunk.len())
                        else {
                            continue;
                        };
                        tracing::warn!(
                            code = failed.code(),
                            sender_fault = failed.sender_fault(),
                            attempt,
                            "SQS refused a work message"
                        );
                        // A sender fault will not heal by retrying; SQS's own may.
                        if failed.sender_fault() || last {
                            results[i] = Some(Err(refusal(
                                failed.code(),
                                failed.message().unwrap_or("refused by SQS"),
                                failed.sender_fault(),
                            )));
                        }
                    }
                }
                Err(e) => {
                    // The SDK has retried already (throttling, 5xx, timeouts).
                    tracing::warn!(error = %crate::error_chain(&e), attempt, "SendMessageBatch failed");
                    if last {
                        let err = crate::aws::send_error(&e, &[], &[]);
                        for i in pending {
                            results[i] = Some(Err(err.clone()));
                        }
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(refusal("NoAnswer", "SQS did not report this entry", false))
                })
            })
            .collect()
    }
}

/// A message not to be worked before its `not_before`: delayed by the time
/// left, 15 minutes at most (SQS's limit; a worker that gets it early sends
/// it on again).
fn delay_seconds(batch: &WorkBatch) -> Option<i32> {
    let due = batch.not_before?;
    let now = crate::model::event::epoch_ms(time::OffsetDateTime::now_utc());
    let left = ((due - now).max(0) + 999) / 1000;
    (left > 0).then(|| left.min(900) as i32)
}

fn refusal(code: &str, message: &str, permanent: bool) -> SendError {
    if permanent {
        SendError::permanent(code, message)
    } else {
        SendError::transient(code, message)
    }
}

impl WorkQueue for SqsQueue {
    fn enqueue<'a>(
        &'a self,
        batches: &'a [WorkBatch],
    ) -> BoxFuture<'a, Vec<Result<(), SendError>>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(batches.len());
            // A few calls in flight at once: 100 messages take about 3 round trips.
            let calls: Vec<_> = batches
                .chunks(SEND_BATCH_MAX)
                .map(|chunk| self.send_chunk(chunk))
                .collect();
            let answers: Vec<Vec<Result<(), SendError>>> = futures::StreamExt::collect(
                futures::StreamExt::buffered(futures::stream::iter(calls), 4),
            )
            .await;
            for a in answers {
                results.extend(a);
            }
            results
        })
    }
}
