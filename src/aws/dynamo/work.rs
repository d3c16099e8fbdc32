//! Work batches: `WORK#{eventID}`, the queue messages of a handed-off event
//! not finished yet.

use super::*;

/// The item that lists a handed-off event's open work batches.
pub fn work_sk(event_id: &str) -> String {
    format!("WORK#{event_id}")
}

impl DynamoStore {
    pub(super) async fn open_batches_in(
        &self,
        org: &OrgId,
        event_id: &str,
        batch_ids: &[String],
    ) -> Result<(), StoreError> {
        if batch_ids.is_empty() {
            return Ok(());
        }
        // ADD: a retried or rebuilt hand-off adds what is missing; a batch
        // already there stays once.
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(org_pk(org), work_sk(event_id))))
            .update_expression("ADD pendingBatches :ids SET eventID = :e, organizationID = :o")
            .expression_attribute_values(":ids", AttributeValue::Ss(batch_ids.to_vec()))
            .expression_attribute_values(":e", AttributeValue::S(event_id.to_owned()))
            .expression_attribute_values(":o", AttributeValue::S(org.to_string()))
            .send()
            .await
            .map_err(unavailable("record work batches"))?;
        Ok(())
    }

    pub(super) async fn complete_batch_in(
        &self,
        org: &OrgId,
        event_id: &str,
        batch_id: &str,
    ) -> Result<BatchProgress, StoreError> {
        const OP: &str = "complete work batch";
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(org_pk(org), work_sk(event_id))))
            .update_expression("DELETE pendingBatches :done")
            .condition_expression("contains(pendingBatches, :id)")
            .expression_attribute_values(":done", AttributeValue::Ss(vec![batch_id.to_owned()]))
            .expression_attribute_values(":id", AttributeValue::S(batch_id.to_owned()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        let (removed, item) = match result {
            Ok(out) => (true, out.attributes),
            Err(e) if conditional_failed(&e) => {
                // Completed before (a redelivered message): read where things stand.
                (
                    false,
                    self.get_with(OP, org_pk(org), work_sk(event_id), true)
                        .await?,
                )
            }
            Err(e) => return Err(unavailable(OP)(e)),
        };
        let remaining = match item.as_ref().and_then(|i| i.get("pendingBatches")) {
            Some(AttributeValue::Ss(left)) => left.len(),
            _ => 0,
        };
        Ok(BatchProgress { removed, remaining })
    }
}
