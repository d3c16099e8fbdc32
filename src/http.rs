//! HTTP request -> command, result -> HTTP response. Every answer is JSON:
//! the NotificationEvent on 200, a plain JSON string saying what is wrong
//! otherwise (docs/contract.md -> Outputs).

use lambda_http::http::{HeaderValue, Method, StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::Value;

use crate::config::Access;
use crate::metrics::Outcome;
use crate::model::{ContactIdList, CreatedBy, EntityType, IdempotencyKey, OfferId, OrgId};
use crate::notify::{ErrorKind, NotifyCommand, NotifyContacts, NotifyError};
use crate::read::EventReader;

/// Largest body accepted. 1000 IDs of 128 characters fit with room to spare.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The request header that makes a retry safe (IETF httpapi draft's name).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub const ROUTE: &str = "/org/{orgId}/offer/{offerId}/notifyContacts";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {route}; use {allow}")]
    MethodNotAllowed {
        method: String,
        route: &'static str,
        allow: &'static str,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    KeyReused(String),
    #[error("internal error")]
    Internal(#[source] NotifyError),
}

impl ApiError {
    /// The one place where errors become status codes.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::KeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<NotifyError> for ApiError {
    fn from(e: NotifyError) -> Self {
        match e.kind() {
            ErrorKind::BadRequest => ApiError::BadRequest(e.to_string()),
            ErrorKind::NotFound => ApiError::NotFound(e.to_string()),
            ErrorKind::KeyInProgress => ApiError::Conflict(e.to_string()),
            ErrorKind::KeyReused => ApiError::KeyReused(e.to_string()),
            ErrorKind::Internal => ApiError::Internal(e),
        }
    }
}

/// Serves one HTTP request. Never fails: every outcome is a response.
pub async fn handle<U: NotifyContacts + EventReader>(
    use_case: &U,
    access: &Access,
    req: Request,
) -> Response<Body> {
    respond(use_case, access, req).await.0
}

/// Serves one HTTP request and says how it ended.
pub async fn respond<U: NotifyContacts + EventReader>(
    use_case: &U,
    access: &Access,
    req: Request,
) -> (Response<Body>, Outcome) {
    let request_id = req
        .lambda_context_ref()
        .map(|c| c.request_id.clone())
        .unwrap_or_default();
    // The read routes (GET): the same org check, the same error shape.
    match read_route(&req) {
        Ok(Some(route)) => {
            let answer = match authorize(&req, access, &route.org) {
                Ok(_) => crate::read::serve(use_case, &route, &query_of(&req)).await,
                Err(e) => Err(e),
            };
            return match answer {
                Ok(body) => (json(StatusCode::OK, &body), Outcome::refused("read")),
                Err(e) => {
                    let resp = error_response(&e, &request_id);
                    let label = label_of(resp.status());
                    (resp, Outcome::refused(label))
                }
            };
        }
        Ok(None) => {}
        Err(e) => {
            let resp = error_response(&e, &request_id);
            let label = label_of(resp.status());
            return (resp, Outcome::refused(label));
        }
    }
    let result = match command(&req, access) {
        Ok(cmd) => use_case.notify_counted(cmd).await.map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match result {
        Ok(n) => {
            tracing::info!(
                status = 200,
                event_id = n.event.event_id.as_deref().unwrap_or(""),
                replay = n.replay,
                "notifyContacts answered"
            );
            (json(StatusCode::OK, &n.event), Outcome::answered(&n))
        }
        Err(e) => {
            let resp = error_response(&e, &request_id);
            let label = label_of(resp.status());
            (resp, Outcome::refused(label))
        }
    }
}

/// The outcome label of an error answer's status.
fn label_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "ok",
        400 => "bad_request",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        422 => "key_reused",
        _ => "internal",
    }
}

fn error_response(e: &ApiError, request_id: &str) -> Response<Body> {
    let status = e.status();
    let message = match e {
        ApiError::Internal(cause) => {
            tracing::error!(status = status.as_u16(), error = %crate::error_chain(cause), "notifyContacts failed");
            format!("internal error; quote request id {request_id} when reporting it")
        }
        other => {
            tracing::info!(status = status.as_u16(), reason = %other, "notifyContacts refused");
            other.to_string()
        }
    };
    let mut resp = json(status, &message);
    if let ApiError::MethodNotAllowed { allow, .. } = e {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    resp
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "\"internal error\"".to_owned());
    let mut resp = Response::new(Body::Text(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Parses route, method, caller and body into a command.
pub fn command(req: &Request, access: &Access) -> Result<NotifyCommand, ApiError> {
    let (org, offer) = route(req)?;
    if req.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            route: ROUTE,
            allow: "POST",
        });
    }
    let org_id = OrgId::parse(&org).map_err(|e| ApiError::BadRequest(format!("path: {e}")))?;
    let offer_id =
        OfferId::parse(&offer).map_err(|e| ApiError::BadRequest(format!("path: {e}")))?;
    let caller = authorize(req, access, &org_id)?;
    let contact_ids = parse_body(req.body())?;
    let idempotency_key = match req.headers().get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::BadRequest("the Idempotency-Key header must be plain text".into())
                })
                .and_then(|k| {
                    IdempotencyKey::parse(k)
                        .map_err(|e| ApiError::BadRequest(format!("Idempotency-Key header: {e}")))
                })?,
        ),
    };
    let dry_run = match req
        .query_string_parameters_ref()
        .and_then(|q| q.first("dryRun"))
    {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "the dryRun query parameter must be true or false".into(),
            ));
        }
    };
    Ok(NotifyCommand {
        org_id,
        offer_id,
        contact_ids,
        created_by: caller.created_by,
        idempotency_key,
        deadline: req.lambda_context_ref().and_then(crate::event::deadline),
        dry_run,
        // The HTTP body is the contact list alone (the API's reference
        // page); customFields come through direct invocations and
        // EventBridge.
        custom_fields: None,
    })
}

/// Fail closed: the caller's organisation must be known, and be the path's.
pub fn authorize(req: &Request, access: &Access, org_id: &OrgId) -> Result<Caller, ApiError> {
    let caller = Caller::from_request(req, &access.org_claim);
    match (caller.authorizer, caller.organization_id.as_deref()) {
        (false, _) if access.http_without_authorizer => {}
        (false, _) => {
            return Err(ApiError::Forbidden(
                "this API serves only requests authorized by its authorizer; none authorized this one".into(),
            ));
        }
        (true, None) => {
            return Err(ApiError::Forbidden(format!(
                "the caller's credentials name no organization (claim {}); ask for a token that carries it",
                access.org_claim
            )));
        }
        (true, Some(caller_org)) if caller_org != org_id.as_str() => {
            return Err(ApiError::Forbidden(format!(
                "these credentials do not grant access to organization {org_id}"
            )));
        }
        (true, Some(_)) => {}
    }
    Ok(caller)
}

/// The query string's parameters (the first value of each).
fn query_of(req: &Request) -> std::collections::HashMap<String, String> {
    req.query_string_parameters_ref()
        .map(|q| {
            q.iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// A read route of the path, GET only: `None` when the path is not one.
fn read_route(req: &Request) -> Result<Option<crate::read::ReadRoute>, ApiError> {
    use crate::read::{ReadRoute, Target};
    let path = req.uri().path();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let (org, target, pattern) = match segments.as_slice() {
        [.., "org", org, "notificationEvent"] => {
            (*org, Target::Events, "/org/{orgId}/notificationEvent")
        }
        [.., "org", org, "notificationEvent", t, id] => (
            *org,
            Target::EntityEvents {
                entity_type: (*t).to_owned(),
                entity_id: (*id).to_owned(),
            },
            "/org/{orgId}/notificationEvent/{entityType}/{entityId}",
        ),
        [.., "org", org, "notificationMessage"] => {
            (*org, Target::Messages, "/org/{orgId}/notificationMessage")
        }
        [.., "org", org, "notificationMessage", id] => (
            *org,
            Target::Message((*id).to_owned()),
            "/org/{orgId}/notificationMessage/{notificationMessageId}",
        ),
        _ => return Ok(None),
    };
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed {
            method: req.method().to_string(),
            route: pattern,
            allow: "GET",
        });
    }
    let org = OrgId::parse(org).map_err(|e| ApiError::BadRequest(format!("path: {e}")))?;
    Ok(Some(ReadRoute { org, target }))
}

/// The path's orgId and offerId: from API Gateway's path parameters when it
/// gives them, else from the path itself (Function URLs, ALB, a stage prefix).
fn route(req: &Request) -> Result<(String, String), ApiError> {
    let params = req.path_parameters();
    if let (Some(org), Some(offer)) = (params.first("orgId"), params.first("offerId")) {
        return Ok((org.to_owned(), offer.to_owned()));
    }
    let path = req.uri().path();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        [.., "org", org, "offer", offer, "notifyContacts"] => {
            Ok(((*org).to_owned(), (*offer).to_owned()))
        }
        _ => Err(ApiError::NotFound(format!(
            "no such route; the routes are POST {ROUTE}, GET /org/{{orgId}}/notificationEvent[/{{entityType}}/{{entityId}}] and GET /org/{{orgId}}/notificationMessage[/{{id}}]"
        ))),
    }
}

/// The body: a JSON array of contact ID strings, `null`, or nothing.
pub fn parse_body(body: &Body) -> Result<Option<ContactIdList>, ApiError> {
    let bytes: &[u8] = body.as_ref();
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::BadRequest(format!(
            "the body is {} bytes; the limit is {MAX_BODY_BYTES} bytes",
            bytes.len()
        )));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::BadRequest("the body is not valid UTF-8 text".into()))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    let items = match value {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        other => {
            return Err(ApiError::BadRequest(format!(
                "the body must be a JSON array of contact ID strings, like [\"c1\",\"c2\"], or empty; it is {}",
                kind_of(&other)
            )));
        }
    };
    let ids = items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.as_str()),
            other => Err(ApiError::BadRequest(format!(
                "contact ID at position {i} is {}; contact IDs are strings",
                kind_of(other)
            ))),
        })
        .collect::<Result<Vec<&str>, _>>()?;
    ContactIdList::parse(&ids)
        .map(Some)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Who is calling, from the authorizer context API Gateway adds.
#[derive(Debug, Default, PartialEq)]
pub struct Caller {
    /// An authorizer vouched for the request (JWT claims, a Lambda
    /// authorizer's context, a Cognito or IAM authorizer).
    pub authorizer: bool,
    /// The caller's organisation, from the claim `org_claim`.
    pub organization_id: Option<String>,
    pub created_by: Option<CreatedBy>,
}

impl Caller {
    pub fn from_request(req: &Request, org_claim: &str) -> Self {
        let ctx = req.request_context_ref();
        let authorizer = match ctx {
            Some(RequestContext::ApiGatewayV1(c)) => Some(&c.authorizer),
            Some(RequestContext::ApiGatewayV2(c)) => c.authorizer.as_ref(),
            _ => None,
        }
        .filter(|a| a.jwt.is_some() || a.iam.is_some() || !a.fields.is_empty());
        let Some(authorizer) = authorizer else {
            return Self::default();
        };
        // REST and HTTP-API Lambda authorizers put the context in `fields`
        // (a REST Cognito authorizer under `fields.claims`); JWT authorizers
        // in their claims.
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let get = |k: &str| -> Option<String> {
            authorizer
                .fields
                .get(k)
                .and_then(text)
                .or_else(|| authorizer.fields.get("claims")?.get(k).and_then(text))
                .or_else(|| {
                    authorizer
                        .jwt
                        .as_ref()
                        .and_then(|j| j.claims.get(k).cloned())
                })
                .filter(|s| !s.is_empty())
        };
        let created_by = CreatedBy {
            email: get("email"),
            entity_id: get("entityId"),
            entity_type: get("entityType").map(|t| EntityType::from(t.as_str())),
            name: get("name"),
        };
        let any = created_by != CreatedBy::default();
        Self {
            authorizer: true,
            organization_id: get(org_claim),
            created_by: any.then_some(created_by),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str) -> String {
        match parse_body(&Body::from(body)) {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("expected 400 for {body:?}, got {other:?}"),
        }
    }

    #[test]
    fn absent_null_and_empty_bodies_mean_every_contact() {
        assert_eq!(parse_body(&Body::Empty).unwrap(), None);
        assert_eq!(parse_body(&Body::from("  ")).unwrap(), None);
        assert_eq!(parse_body(&Body::from("null")).unwrap(), None);
        assert!(parse_body(&Body::from("[]")).unwrap().unwrap().is_empty());
    }

    #[test]
    fn wrong_shapes_get_a_sentence() {
        assert!(bad(r#"{"contactIds":["c1"]}"#).contains("it is an object"));
        assert!(bad("[1]").contains("position 0 is a number"));
        assert!(bad(r#"[["c1"]]"#).contains("position 0 is an array"));
        assert!(bad(r#"["c1", ""]"#).contains("must not be empty"));
        assert!(bad("[\"c\\u0001\"]").contains("may contain only"));
        assert!(bad("[").contains("not valid JSON"));
        assert!(bad(&"[".repeat(1000)).contains("not valid JSON"));
    }

    #[test]
    fn invalid_utf8_and_oversized_bodies_are_refused() {
        assert!(
            matches!(parse_body(&Body::Binary(vec![b'[', 0xff, b']'])), Err(ApiError::BadRequest(m)) if m.contains("UTF-8"))
        );
        let big = format!("[{}]", vec!["\"c\""; MAX_BODY_BYTES / 3].join(","));
        assert!(
            matches!(parse_body(&Body::from(big)), Err(ApiError::BadRequest(m)) if m.contains("limit is"))
        );
    }
}
