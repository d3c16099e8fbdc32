//! The read API over the real wire to DynamoDB on moto: every route reads
//! back what a notification stored, no route reads another organisation's
//! data, the cursor stays correct while events are written, and bad
//! parameters are a 400 with a sentence.

mod common;

use std::collections::HashSet;

use common::{HttpAnswer, TestEnv};
use serde_json::{Value, json};

async fn read(env: &TestEnv, path: &str, query: &[(&str, &str)], org: &str) -> HttpAnswer {
    HttpAnswer::from(
        env.invoke(common::http_get(path, query, org))
            .await
            .expect("an answer"),
    )
}

async fn notify(env: &TestEnv, org: &str) -> String {
    let e = env
        .invoke(json!({"orgId": org, "offerId": "offer-demo", "contactIds": null}))
        .await
        .expect("notified");
    e["eventID"].as_str().unwrap().to_owned()
}

fn ids(page: &HttpAnswer) -> Vec<String> {
    page.body["notificationEvents"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", page.body))
        .iter()
        .map(|e| e["eventID"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_notification_is_read_back_by_every_route() {
    let env = TestEnv::new().await;
    let event_id = notify(&env, "org-demo").await;

    let list = read(&env, "/org/org-demo/notificationEvent", &[], "org-demo").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(ids(&list), vec![event_id.clone()]);
    assert_eq!(list.body["totalCount"], 1);
    assert_eq!(list.body["nextOffset"], Value::Null);
    let listed = &list.body["notificationEvents"][0];
    assert_eq!(listed["eventStatus"], "DONE");
    assert!(
        listed.get("contactEmails").is_none() && listed.get("contactIds").is_none(),
        "lists leave out what grows with the recipients"
    );

    let of_offer = read(
        &env,
        "/org/org-demo/notificationEvent/OFFER/offer-demo",
        &[],
        "org-demo",
    )
    .await;
    assert_eq!(ids(&of_offer), vec![event_id.clone()]);

    let messages = read(
        &env,
        "/org/org-demo/notificationMessage",
        &[("eventId", &event_id)],
        "org-demo",
    )
    .await;
    assert_eq!(messages.status, 200, "{}", messages.body);
    let all = messages.body["notificationMessages"].as_array().unwrap();
    // Ann and Bob by email, Ann and Cat by SMS, the topic; Cat has no email.
    assert_eq!(messages.body["totalCount"], all.len());
    let ann = all
        .iter()
        .find(|m| m["type"] == "EMAIL" && m["recipient"] == "c-ann")
        .expect("Ann's email");
    assert_eq!(ann["organizationID"], "org-demo");
    assert_eq!(ann["info"]["customFields"]["status"], "SENT");
    assert!(ann["info"]["customFields"]["providerMessageId"].is_string());
    assert_eq!(ann["id"], format!("{event_id}.EMAIL.c-ann"));
    let skipped = all
        .iter()
        .find(|m| m["type"] == "EMAIL" && m["recipient"] == "c-cat")
        .expect("Cat's email");
    assert_eq!(skipped["info"]["customFields"]["status"], "SKIPPED");

    let one = read(
        &env,
        &format!("/org/org-demo/notificationMessage/{event_id}.EMAIL.c-ann"),
        &[],
        "org-demo",
    )
    .await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(
        one.body["info"]["customFields"],
        ann["info"]["customFields"]
    );
}

#[tokio::test]
async fn no_route_reads_another_organisations_data() {
    let env = TestEnv::new().await;
    // org-other holds an offer with the same ID, and its own event.
    let mine = notify(&env, "org-demo").await;
    let theirs = notify(&env, "org-other").await;
    let routes = |org: &str, event: &str| {
        vec![
            (format!("/org/{org}/notificationEvent"), vec![]),
            (
                format!("/org/{org}/notificationEvent/OFFER/offer-demo"),
                vec![],
            ),
            (
                format!("/org/{org}/notificationMessage"),
                vec![("eventId".to_owned(), event.to_owned())],
            ),
            (
                format!("/org/{org}/notificationMessage/{event}.EMAIL.c-zed"),
                vec![],
            ),
        ]
    };
    let mut leaks = 0;
    // The caller of org-demo asks its own routes for org-other's event.
    for (path, q) in routes("org-demo", &theirs) {
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let a = read(&env, &path, &q, "org-demo").await;
        // Only org-other has these; what the caller asked for may be echoed
        // back in its 404.
        let asked = path.rsplit('/').next().unwrap_or_default().to_owned();
        let text = a.body.to_string().replace(&asked, "");
        let listed_theirs = a.status == 200 && text.contains(&theirs);
        if listed_theirs || text.contains("c-zed") || text.contains("org-other") {
            leaks += 1;
        }
        let list = path.ends_with("notificationEvent") || path.ends_with("offer-demo");
        assert_eq!(a.status, if list { 200 } else { 404 }, "{path}: {}", a.body);
    }
    // ... and org-other's routes: refused before anything is read.
    for (path, q) in routes("org-other", &theirs) {
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let a = read(&env, &path, &q, "org-demo").await;
        assert_eq!(a.status, 403, "{path}");
        if a.body.to_string().contains(&theirs[..8]) {
            leaks += 1;
        }
    }
    assert_eq!(leaks, 0);
    // Its own event is there.
    let own = read(&env, "/org/org-demo/notificationEvent", &[], "org-demo").await;
    assert_eq!(ids(&own), [mine]);
}

#[tokio::test]
async fn the_cursor_stays_correct_while_events_are_written() {
    let env = TestEnv::new().await;
    let mut before = Vec::new();
    for _ in 0..7 {
        before.push(notify(&env, "org-demo").await);
    }
    let path = "/org/org-demo/notificationEvent/OFFER/offer-demo";
    let first = read(&env, path, &[("limit", "3")], "org-demo").await;
    assert_eq!(first.body["totalCount"], 7);
    let mut seen = ids(&first);
    // Newest first.
    assert_eq!(
        seen,
        before.iter().rev().take(3).cloned().collect::<Vec<_>>()
    );
    // Two more events arrive while the caller pages.
    let newer = [
        notify(&env, "org-demo").await,
        notify(&env, "org-demo").await,
    ];
    let mut cursor = first.body["nextCursor"].as_str().unwrap().to_owned();
    loop {
        let page = read(
            &env,
            path,
            &[("limit", "3"), ("cursor", &cursor)],
            "org-demo",
        )
        .await;
        assert_eq!(page.status, 200, "{}", page.body);
        seen.extend(ids(&page));
        match page.body["nextCursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    let mut expected = before.clone();
    expected.reverse();
    assert_eq!(
        seen, expected,
        "every event that existed, once, newest first"
    );
    // The new ones are on a fresh first page.
    let fresh = read(&env, path, &[("limit", "2")], "org-demo").await;
    assert_eq!(ids(&fresh), [newer[1].clone(), newer[0].clone()]);
}

#[tokio::test]
async fn bad_parameters_are_a_400_with_a_sentence() {
    let env = TestEnv::new().await;
    let events = "/org/org-demo/notificationEvent";
    for (path, query, says) in [
        (
            events,
            vec![("limit", "0")],
            "limit must be a whole number from 1 to 1000",
        ),
        (events, vec![("limit", "1001")], "limit must be"),
        (events, vec![("offset", "-1")], "offset must be"),
        (
            events,
            vec![("startDate", "2026-13-01")],
            "startDate must be a date as YYYY-MM-DD",
        ),
        (
            events,
            vec![("startDate", "2026-11-02"), ("endDate", "2026-11-01")],
            "startDate is after endDate",
        ),
        (
            events,
            vec![("cursor", "nope")],
            "cursor must be an event ID",
        ),
        (
            "/org/org-demo/notificationEvent/NOPE/offer-demo",
            vec![],
            "is not an entity type",
        ),
        (
            "/org/org-demo/notificationMessage",
            vec![],
            "eventId is required",
        ),
        (
            "/org/org-demo/notificationMessage/not-an-id",
            vec![],
            "the message ID must be",
        ),
    ] {
        let a = read(&env, path, &query, "org-demo").await;
        assert_eq!(a.status, 400, "{path} {query:?}: {}", a.body);
        assert!(a.message().contains(says), "{path}: {}", a.message());
    }
    let a = read(
        &env,
        events,
        &[("startDate", "2020-01-01"), ("endDate", "2026-11-30")],
        "org-demo",
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a.message().contains("more than 366"), "{}", a.message());
    // A cursor older than the range (an old page while the days moved on):
    // an empty page, not an error.
    let old = "0193a000-0000-7000-8000-000000000000";
    let a = read(&env, events, &[("cursor", old)], "org-demo").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["notificationEvents"], json!([]));
    assert_eq!(a.body["nextCursor"], Value::Null);
    // An unknown event or message: 404.
    let unknown = "0193a000-0000-7000-8000-000000000000";
    let a = read(
        &env,
        "/org/org-demo/notificationMessage",
        &[("eventId", unknown)],
        "org-demo",
    )
    .await;
    assert_eq!(a.status, 404);
    // Another method on a read route: 405, Allow: GET.
    let mut post = common::http_get(events, &[], "org-demo");
    post["requestContext"]["http"]["method"] = json!("POST");
    let a = HttpAnswer::from(env.invoke(post).await.unwrap());
    assert_eq!(a.status, 405);
    assert_eq!(a.header("allow"), Some("GET"));
    // No authorizer claim: 403, as for the POST.
    let mut no_claim = common::http_get(events, &[], "org-demo");
    no_claim["requestContext"]["authorizer"]["lambda"]
        .as_object_mut()
        .unwrap()
        .remove("organizationID");
    let a = HttpAnswer::from(env.invoke(no_claim).await.unwrap());
    assert_eq!(a.status, 403);
}

#[tokio::test]
async fn an_uppercase_cursor_on_the_offer_route_is_served() {
    let env = TestEnv::new().await;
    notify(&env, "org-demo").await;
    let a = read(
        &env,
        "/org/org-demo/notificationEvent/OFFER/offer-demo",
        &[("cursor", "C057C1dA-d4B8-1B9d-CD90-eA5CbE5B9F00")],
        "org-demo",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
}
