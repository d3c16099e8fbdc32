//! Idempotency keys: the claim, the take-over of a run out lock, the
//! sweeper's hold, the close.

use super::*;

impl IdempotencyStore for DynamoStore {
    async fn claim(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        record: &IdempotencyRecord,
        now_s: i64,
    ) -> Result<Claim, StoreError> {
        const OP: &str = "claim idempotency key";
        let mut item: Item = serde_dynamo::to_item(record).map_err(malformed(OP))?;
        item.extend(self::key(org_pk(org), idempotency_sk(key)));
        let claimed = self
            .put_item_if(
                OP,
                item,
                // Free, or past its window (DynamoDB's TTL deletes late; the code does not rely on it).
                "attribute_not_exists(pk) OR expiresAt < :now",
                &[],
                vec![(":now", AttributeValue::N(now_s.to_string()))],
            )
            .await?;
        if claimed {
            return Ok(Claim::Claimed);
        }
        let held = self
            .get_with(OP, org_pk(org), idempotency_sk(key), true)
            .await?
            .ok_or(StoreError::Conflict { op: OP })?;
        Ok(Claim::Existing(
            serde_dynamo::from_item(held).map_err(malformed(OP))?,
        ))
    }

    async fn take_over(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        previous_lock: i64,
        locked_until: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self::key(org_pk(org), idempotency_sk(key))))
            .update_expression("SET lockedUntil = :new")
            .condition_expression("#s = :running AND lockedUntil = :prev")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":new", AttributeValue::N(locked_until.to_string()))
            .expression_attribute_values(":prev", AttributeValue::N(previous_lock.to_string()))
            .expression_attribute_values(":running", AttributeValue::S("IN_PROGRESS".into()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(unavailable("take over idempotency key")(e)),
        }
    }

    async fn hold_for_sweep(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        event_id: &str,
        now_ms: i64,
        locked_until: i64,
    ) -> Result<KeyHold, StoreError> {
        const OP: &str = "hold idempotency key for the sweeper";
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self::key(org_pk(org), idempotency_sk(key))))
            .update_expression("SET lockedUntil = :new")
            .condition_expression("#s = :running AND lockedUntil < :now AND eventID = :e")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":new", AttributeValue::N(locked_until.to_string()))
            .expression_attribute_values(":now", AttributeValue::N(now_ms.to_string()))
            .expression_attribute_values(":running", AttributeValue::S("IN_PROGRESS".into()))
            .expression_attribute_values(":e", AttributeValue::S(event_id.to_owned()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(KeyHold::Held),
            Err(e) if conditional_failed(&e) => {
                let held = self
                    .get_with(OP, org_pk(org), idempotency_sk(key), true)
                    .await?;
                let attr = |k: &str| held.as_ref().and_then(|i| i.get(k));
                // Busy only while a request holds *this event's* key.
                let busy = attr("status") == Some(&AttributeValue::S("IN_PROGRESS".into()))
                    && attr("eventID") == Some(&AttributeValue::S(event_id.to_owned()));
                Ok(if busy { KeyHold::Busy } else { KeyHold::Free })
            }
            Err(e) => Err(unavailable(OP)(e)),
        }
    }

    async fn finish(
        &self,
        org: &OrgId,
        key: &IdempotencyKey,
        outcome: KeyOutcome,
    ) -> Result<(), StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self::key(org_pk(org), idempotency_sk(key))));
        let update = match outcome {
            KeyOutcome::Completed => update
                .update_expression("SET #s = :done")
                .expression_attribute_names("#s", "status")
                .expression_attribute_values(":done", AttributeValue::S("COMPLETED".into())),
            KeyOutcome::Released => update
                .update_expression("SET lockedUntil = :zero")
                .expression_attribute_values(":zero", AttributeValue::N("0".into())),
        };
        update
            .condition_expression("attribute_exists(pk)")
            .send()
            .await
            .map_err(unavailable("finish idempotency key"))?;
        Ok(())
    }
}
