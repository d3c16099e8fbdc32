//! The read API's queries (`crate::read`): an organisation's events by
//! time, one entity's events through the `EntityEvents` index, one ledger
//! entry. Every key condition starts with the organisation.

use super::events::EVENT_WITHOUT_LISTS;
use super::*;
use crate::read::{EventList, EventReader, ListQuery, Scope, time_bound};

/// The index of events by entity: hash `entityIndex`
/// (`ORG#{orgId}#{entityType}#{entityId}`), range `sk`; every attribute
/// projected, so a page is one Query.
pub const ENTITY_INDEX: &str = "EntityEvents";
/// Query pages a list or a count reads at most (each up to 1 MB).
const MAX_PAGES: usize = 40;

/// `entityIndex` for an event that names its organisation and entity.
pub(super) fn entity_index(event: &NotificationEvent) -> Vec<(String, AttributeValue)> {
    let org = event
        .organization_id
        .as_deref()
        .and_then(|o| OrgId::parse(o).ok());
    match (org, &event.entity_type, &event.entity_id) {
        (Some(org), Some(t), Some(id)) => vec![(
            "entityIndex".to_owned(),
            AttributeValue::S(entity_key(&org, t.as_str(), id)),
        )],
        _ => Vec::new(),
    }
}

fn entity_key(org: &OrgId, entity_type: &str, entity_id: &str) -> String {
    format!("{}#{entity_type}#{entity_id}", org_pk(org))
}

/// The key condition of a scope: its index, expression and values.
fn condition(
    org: &OrgId,
    scope: &Scope,
    before: Option<&str>,
) -> (
    Option<&'static str>,
    &'static str,
    Vec<(&'static str, String)>,
) {
    let (index, cond, key, lo, mut hi) = match scope {
        Scope::Org { from_ms, to_ms } => (
            None,
            "pk = :k AND sk BETWEEN :lo AND :hi",
            org_pk(org),
            event_sk(&time_bound(*from_ms)),
            event_sk(&time_bound(*to_ms)),
        ),
        Scope::Entity {
            entity_type,
            entity_id,
        } => (
            Some(ENTITY_INDEX),
            "entityIndex = :k AND sk BETWEEN :lo AND :hi",
            entity_key(org, entity_type, entity_id),
            event_sk(""),
            event_sk("~"),
        ),
    };
    if let Some(b) = before {
        hi = hi.min(event_sk(b));
    }
    (index, cond, vec![(":k", key), (":lo", lo), (":hi", hi)])
}

/// A range whose upper bound fell below its lower one (a cursor older than
/// `startDate`): nothing to read (DynamoDB would refuse the BETWEEN).
fn empty(values: &[(&str, String)]) -> bool {
    let get = |n: &str| values.iter().find(|(k, _)| *k == n).map(|(_, v)| v);
    get(":hi") < get(":lo")
}

impl DynamoStore {
    /// A Query of the scope's key condition, newest first, from `start`.
    fn scope_query(
        &self,
        (index, cond, values): &(
            Option<&'static str>,
            &'static str,
            Vec<(&'static str, String)>,
        ),
        start: Option<Item>,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .set_index_name(index.map(str::to_owned))
            .key_condition_expression(*cond)
            .set_exclusive_start_key(start);
        for (k, v) in values {
            query = query.expression_attribute_values(*k, AttributeValue::S(v.clone()));
        }
        query
    }
}

impl EventReader for DynamoStore {
    async fn list_events(&self, org: &OrgId, q: &ListQuery) -> Result<EventList, StoreError> {
        const OP: &str = "list events";
        let scope = condition(org, &q.scope, q.before.as_deref());
        if empty(&scope.2) {
            return Ok(EventList::default());
        }
        let cursor = q.before.as_deref().map(event_sk);
        // Pages ran out before the page was full: more may follow.
        let mut cut = false;
        // One more than the page, to know whether more follow.
        let want = q.offset + q.limit + 1;
        let mut found: Vec<NotificationEvent> = Vec::new();
        let mut start: Option<Item> = None;
        for page_no in 0..MAX_PAGES {
            let (expression, names) =
                super::projection(EVENT_WITHOUT_LISTS.iter().copied().chain(["sk"]));
            let page = self
                .scope_query(&scope, start.take())
                .scan_index_forward(false)
                .limit((want - found.len()).min(i32::MAX as usize) as i32)
                .projection_expression(expression)
                .set_expression_attribute_names(Some(names))
                .send()
                .await
                .map_err(unavailable(OP))?;
            for mut item in page.items.unwrap_or_default() {
                let sk = item.remove("sk");
                if let (Some(c), Some(AttributeValue::S(sk))) = (&cursor, &sk)
                    && sk == c
                {
                    continue;
                }
                found.push(serde_dynamo::from_item(item).map_err(malformed(OP))?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() && found.len() < want => {
                    cut = page_no + 1 == MAX_PAGES;
                    start = Some(k);
                }
                _ => break,
            }
        }
        let more = cut || found.len() > q.offset + q.limit;
        let events = found.into_iter().skip(q.offset).take(q.limit).collect();
        Ok(EventList { events, more })
    }

    async fn count_events(&self, org: &OrgId, scope: &Scope) -> Result<Option<usize>, StoreError> {
        const OP: &str = "count events";
        let scope = condition(org, scope, None);
        if empty(&scope.2) {
            return Ok(Some(0));
        }
        let mut count = 0usize;
        let mut start: Option<Item> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .scope_query(&scope, start.take())
                .select(aws_sdk_dynamodb::types::Select::Count)
                .send()
                .await
                .map_err(unavailable(OP))?;
            count += page.count.max(0) as usize;
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(Some(count)),
            }
        }
        // Too many to count here: say nothing rather than a wrong number.
        Ok(None)
    }

    async fn event_messages(
        &self,
        org: &OrgId,
        event_id: &str,
    ) -> Result<Option<(NotificationEvent, Vec<Delivery>)>, StoreError> {
        self.event_with_deliveries_in(org, event_id).await
    }

    async fn delivery(
        &self,
        org: &OrgId,
        event_id: &str,
        channel: &str,
        contact: &str,
    ) -> Result<Option<Delivery>, StoreError> {
        const OP: &str = "read delivery";
        let item = self
            .get_projected(
                OP,
                org_pk(org),
                format!("DELIVERY#{event_id}#{channel}#{contact}"),
                // As consistent as the event's listing, which reads the same.
                true,
                &[],
            )
            .await?;
        match item {
            Some(i) => serde_dynamo::from_item(i).map(Some).map_err(malformed(OP)),
            // A synchronous send announced with its group has no entry of
            // its own until its outcome is written.
            None => {
                self.announced_in(org, event_id, &format!("{channel}#{contact}"))
                    .await
            }
        }
    }
}
