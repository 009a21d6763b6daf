//! The fake's HTTP endpoints, answering as HubSpot does (docs/HUBSPOT.md): CRM search,
//! batch read, the list endpoint (live or archived), the properties API and the account
//! details, with HubSpot's error bodies, Bearer auth, a per-second search limit, faults
//! and holds from the knobs, and the `DAILY` 429 once the account's day is used up.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde_json::{Value, json};

use super::knobs::{Fault, Mutation};
use super::search::SearchRequest;
use super::store::Store;
use super::{Shared, lock};
use crate::object::ObjectType;
use crate::timestamp::Millis;

/// The fake's routes.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    // Every endpoint but search counts against the general budget, and answers with its
    // rate-limit headers (docs/HUBSPOT.md §5; search answers carry none).
    let general = Router::new()
        .route("/crm/v3/objects/{object}/batch/read", post(batch_read))
        .route("/crm/v3/objects/{object}", get(list))
        .route("/crm/v3/properties/{object}", get(properties))
        .route("/account-info/v3/details", get(account_info))
        .route("/crm/v3/schemas", get(schemas))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            general_budget,
        ));
    Router::new()
        .route("/crm/v3/objects/{object}/search", post(search))
        .merge(general)
        .with_state(shared)
}

/// The general budget, when the knob sets one: a rolling window of `max` requests per
/// interval. A request over it gets HubSpot's `TEN_SECONDLY_ROLLING` 429; every answer
/// says how much of the window is left.
async fn general_budget(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some((max, interval)) = lock(&shared.knobs).general_limit else {
        return next.run(request).await;
    };
    let now = Instant::now();
    let remaining = {
        let mut window = lock(&shared.general_window);
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= interval)
        {
            window.pop_front();
        }
        if window.len() >= max as usize {
            None
        } else {
            window.push_back(now);
            Some(max as usize - window.len())
        }
    };
    let mut response = match remaining {
        Some(_) => next.run(request).await,
        None => {
            *lock(&shared.statuses).entry(429).or_default() += 1;
            let body = json!({
                "status": "error",
                "message": "You have reached your ten_secondly_rolling limit.",
                "errorType": "RATE_LIMIT",
                "correlationId": correlation_id(&shared),
                "policyName": "TEN_SECONDLY_ROLLING",
            });
            (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response()
        }
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-hubspot-ratelimit-max", u64::from(max)),
        (
            "x-hubspot-ratelimit-remaining",
            remaining.unwrap_or(0) as u64,
        ),
        (
            "x-hubspot-ratelimit-interval-milliseconds",
            u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        ),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
    response
}

/// Counts a call of `kind`, and answers HubSpot's `DAILY` 429 when the knob says the
/// day is used up.
fn count_call(shared: &Shared, kind: &'static str) -> Option<Response> {
    *lock(&shared.calls).entry(kind).or_default() += 1;
    if lock(&shared.knobs).daily_limit_reached {
        return Some(daily_limit(&correlation_id(shared)));
    }
    None
}

/// HubSpot's 403 for an object the token has no scope for, when it is one
/// (docs/HUBSPOT.md §9: the scopes needed are listed in `errors[].context`).
fn scope_refused(shared: &Shared, object: &str) -> Option<Response> {
    if !lock(&shared.knobs).unreadable.iter().any(|o| o == object) {
        return None;
    }
    let scope = if object.starts_with("2-") {
        "crm.objects.custom.read".to_owned()
    } else {
        format!("crm.objects.{object}.read")
    };
    let body = json!({
        "status": "error",
        "message": "This app hasn't been granted all required scopes to make this call. \
                    Read more about required scopes here: https://developers.hubspot.com/scopes.",
        "correlationId": correlation_id(shared),
        "errors": [{
            "message": "One or more of the following scopes are required.",
            "context": {"requiredGranularScopes": [scope]},
        }],
        "links": {"scopes": "https://developers.hubspot.com/scopes"},
        "category": "MISSING_SCOPES",
    });
    Some((StatusCode::FORBIDDEN, axum::Json(body)).into_response())
}

/// HubSpot's answer once the account's daily limit is used up (usage-details docs,
/// verbatim shape).
fn daily_limit(correlation_id: &str) -> Response {
    let body = json!({
        "status": "error",
        "message": "You have reached your daily limit.",
        "errorType": "RATE_LIMIT",
        "correlationId": correlation_id,
        "policyName": "DAILY",
        "requestId": correlation_id,
    });
    (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response()
}

async fn search(
    State(shared): State<Arc<Shared>>,
    Path(object): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = count_call(&shared, "search").or_else(|| scope_refused(&shared, &object))
    {
        return refused;
    }
    // HubSpot counts a request against the limit when it arrives.
    let limited = over_rate_limit(&shared);
    let mut n = 0;
    shared.arrived.send_modify(|c| {
        *c += 1;
        n = *c;
    });
    let held = lock(&shared.knobs).hold_from.is_some_and(|from| n >= from);
    if held {
        let mut released = shared.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
    }

    let correlation_id = correlation_id(&shared);
    let (latency, fault) = {
        let mut knobs = lock(&shared.knobs);
        (knobs.latency, knobs.faults.remove(&n))
    };
    let fault = fault.or_else(|| random_fault(&shared));
    let delay = match fault {
        Some(Fault::Slow(by)) => latency + by,
        _ => latency,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let answer = if limited {
        let (status, mut response) = error(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITS",
            "You have reached your secondly limit.",
            &correlation_id,
        );
        if let Some(secs) = lock(&shared.knobs).retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        (status, response)
    } else {
        // Searching is CPU work; off the async workers, so arrivals are timed truly.
        let shared = Arc::clone(&shared);
        let correlation_id = correlation_id.clone();
        tokio::task::spawn_blocking(move || {
            answer_search(&shared, fault, &object, &headers, &body, &correlation_id)
        })
        .await
        .unwrap_or_else(|_| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "search panicked",
                "",
            )
        })
    };
    *lock(&shared.statuses).entry(answer.0.as_u16()).or_default() += 1;
    apply_mutations(&shared, n);
    let mut response = (answer.0, answer.1).into_response();
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert("x-hubspot-correlation-id", v);
    }
    response
}

type Answer = (StatusCode, Response);

fn answer_search(
    shared: &Shared,
    fault: Option<Fault>,
    object: &str,
    headers: &HeaderMap,
    body: &[u8],
    correlation_id: &str,
) -> Answer {
    if !authorized(shared, headers) {
        return unauthorized(correlation_id);
    }
    // HubSpot refuses search bodies over 3,000 characters (docs/HUBSPOT.md §1).
    if body.len() > 3_000 {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            &format!(
                "The request body is {} characters; at most 3000 are allowed",
                body.len()
            ),
            correlation_id,
        );
    }
    match fault {
        Some(Fault::Drop) => {
            // Headers and half a body, then the connection breaks.
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(br#"{"total":1000,"results":[{"id":"#)),
                Err(std::io::Error::other("connection dropped by the fake")),
            ];
            let body = Body::from_stream(futures_util::stream::iter(chunks));
            return (StatusCode::OK, body.into_response());
        }
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            // HubSpot's error body shape and categories (docs/HUBSPOT.md §9); the 403
            // message is HubSpot's, the 400 and 404 messages stand in for texts HubSpot
            // varies by endpoint (the client shows whatever message it gets).
            let (category, message) = match code {
                400 => ("VALIDATION_ERROR", "There was a problem with the request."),
                403 => (
                    "MISSING_SCOPES",
                    "This app hasn't been granted all required scopes to make this call.",
                ),
                404 => ("OBJECT_NOT_FOUND", "Object not found."),
                429 => ("RATE_LIMITS", "You have reached your secondly limit."),
                _ => ("INTERNAL_ERROR", "Internal error"),
            };
            return error(status, category, message, correlation_id);
        }
        Some(Fault::ProxyHtml(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            let html = format!(
                "<html><head><title>{code}</title></head><body><h1>{status}</h1>cloudflare</body></html>"
            );
            return (
                status,
                ([(header::CONTENT_TYPE, "text/html")], html).into_response(),
            );
        }
        Some(Fault::HtmlOk) => {
            let html = "<!doctype html><html><body><h1>Please sign in to the guest Wi-Fi</h1></body></html>";
            return (
                StatusCode::OK,
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
            );
        }
        Some(Fault::MalformedJson) => {
            let text = r#"{"total":3,"results":[{"id":"1","properties":{"#;
            return (
                StatusCode::OK,
                ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
            );
        }
        _ => {}
    }
    let Some(object) = object_of(shared, object) else {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            &format!("Unable to infer object type from: {object}"),
            correlation_id,
        );
    };
    let request: SearchRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                &format!("Invalid input JSON: {e}"),
                correlation_id,
            );
        }
    };
    let ties = lock(&shared.knobs).ties;
    let mut store = lock(&shared.store);
    let result = {
        let mut rng = lock(&shared.rng);
        store.search(&object, &request, Millis::now(), ties, &mut *rng)
    };
    drop(store);
    let result = match result {
        Ok(r) => r,
        Err(invalid) => {
            return error(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                &invalid.to_string(),
                correlation_id,
            );
        }
    };
    let mut results: Vec<Value> = result
        .results
        .iter()
        .map(|r| Store::to_json(&object, r, &request.properties))
        .collect();
    if let Some(first) = results.first_mut() {
        let property = object.modified_property();
        match fault {
            Some(Fault::MissingModified) => {
                first["properties"][property] = Value::Null;
            }
            Some(Fault::BadTimestamp) => {
                first["properties"][property] = Value::from("last tuesday");
            }
            Some(Fault::MissingId) => {
                if let Some(o) = first.as_object_mut() {
                    o.remove("id");
                }
            }
            _ => {}
        }
    }
    let mut body = json!({ "total": result.total, "results": results });
    if let Some(after) = result.next_after {
        body["paging"] = json!({ "next": { "after": after.to_string() } });
    }
    (StatusCode::OK, axum::Json(body).into_response())
}

/// Whether the request carries the token the fake wants.
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = &shared.token else {
        return true;
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    sent == Some(token.as_str())
}

fn unauthorized(correlation_id: &str) -> Answer {
    error(
        StatusCode::UNAUTHORIZED,
        "INVALID_AUTHENTICATION",
        "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
        correlation_id,
    )
}

/// `GET /crm/v3/properties/{object}`: every property name the object's records use,
/// the system ones, and the extra custom ones of the knob.
async fn properties(
    State(shared): State<Arc<Shared>>,
    Path(object): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = count_call(&shared, "properties") {
        return refused;
    }
    let correlation_id = correlation_id(&shared);
    if !authorized(&shared, &headers) {
        return unauthorized(&correlation_id).1;
    }
    let Some(object) = object_of(&shared, &object) else {
        return error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "Unknown object type",
            &correlation_id,
        )
        .1;
    };
    let mut names: BTreeSet<String> = [
        "hs_object_id",
        object.modified_property(),
        object.created_property(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    names.extend(object.default_properties().iter().map(|s| (*s).to_owned()));
    if object.merges() {
        names.insert("hs_merged_object_ids".to_owned());
    }
    for r in lock(&shared.store).records(object.as_str()) {
        names.extend(r.properties.keys().cloned());
    }
    let extra = lock(&shared.knobs).extra_properties;
    names.extend((1..=extra).map(|i| format!("custom_property_{i:03}")));
    let results: Vec<Value> = names
        .into_iter()
        .map(|name| json!({ "name": name, "label": name, "type": "string", "fieldType": "text" }))
        .collect();
    axum::Json(json!({ "results": results })).into_response()
}

/// `POST /crm/v3/objects/{object}/batch/read`: the current versions (batch read reads
/// the records, not the lagging search index), at most 100 ids a call. Archived and
/// deleted ids are `OBJECT_NOT_FOUND`; a merged-away id answers with the record it was
/// merged into, under that record's id.
async fn batch_read(
    State(shared): State<Arc<Shared>>,
    Path(object): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) =
        count_call(&shared, "batch_read").or_else(|| scope_refused(&shared, &object))
    {
        return refused;
    }
    if lock(&shared.knobs).hold_batch_reads {
        let mut released = shared.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
    }
    let correlation_id = correlation_id(&shared);
    if !authorized(&shared, &headers) {
        return unauthorized(&correlation_id).1;
    }
    #[derive(serde::Deserialize)]
    struct Input {
        id: String,
    }
    #[derive(serde::Deserialize)]
    struct Request {
        #[serde(default)]
        properties: Vec<String>,
        inputs: Vec<Input>,
    }
    let bad = |message: &str| {
        error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            message,
            &correlation_id,
        )
        .1
    };
    let Some(object) = object_of(&shared, &object) else {
        return bad("Unknown object type");
    };
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(&format!("Invalid input JSON: {e}")),
    };
    if request.inputs.len() > 100 {
        return bad("Batch read takes at most 100 inputs");
    }
    let store = lock(&shared.store);
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for input in &request.inputs {
        match input
            .id
            .parse::<u64>()
            .ok()
            .and_then(|id| store.resolve(object.as_str(), id))
        {
            Some(r) => results.push(Store::to_json(&object, r, &request.properties)),
            None => missing.push(input.id.clone()),
        }
    }
    drop(store);
    let mut body = json!({ "status": "COMPLETE", "results": results });
    let status = if missing.is_empty() {
        StatusCode::OK
    } else {
        body["errors"] = json!([{ "status": "error", "category": "OBJECT_NOT_FOUND",
            "message": "Could not get some records", "context": { "ids": missing } }]);
        StatusCode::MULTI_STATUS
    };
    (status, axum::Json(body)).into_response()
}

/// The query of the list endpoint.
#[derive(serde::Deserialize)]
struct ListQuery {
    limit: Option<u64>,
    after: Option<String>,
    #[serde(default)]
    properties: Option<String>,
    #[serde(default)]
    archived: Option<bool>,
}

/// `GET /crm/v3/objects/{object}`: the records themselves (not the search index), in id
/// order, at most 100 a page; `after` is the next record's id, as HubSpot's docs show.
/// With `archived=true`, only the archived records, with `archivedAt`.
async fn list(
    State(shared): State<Arc<Shared>>,
    Path(object): Path<String>,
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let archived = query.archived.unwrap_or(false);
    if let Some(refused) = count_call(&shared, if archived { "list_archived" } else { "list" })
        .or_else(|| scope_refused(&shared, &object))
    {
        return refused;
    }
    let correlation_id = correlation_id(&shared);
    if !authorized(&shared, &headers) {
        return unauthorized(&correlation_id).1;
    }
    let bad = |message: &str| {
        error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            message,
            &correlation_id,
        )
        .1
    };
    let Some(object) = object_of(&shared, &object) else {
        return bad("Unknown object type");
    };
    let limit = query.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return bad("limit must be between 1 and 100");
    }
    let from = match query.after.as_deref().map(str::parse::<u64>) {
        None => 0,
        Some(Ok(id)) => id,
        Some(Err(_)) => return bad("Invalid after"),
    };
    let properties: Vec<String> = query
        .properties
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let store = lock(&shared.store);
    let mut page: Vec<Value> = Vec::new();
    let mut next = None;
    for r in store
        .records_from(object.as_str(), from)
        .filter(|r| r.is_live() != archived)
    {
        if page.len() as u64 == limit {
            next = Some(r.id);
            break;
        }
        page.push(Store::to_json(&object, r, &properties));
    }
    drop(store);
    let mut body = json!({ "results": page });
    if let Some(next) = next {
        body["paging"] = json!({ "next": { "after": next.to_string(),
            "link": format!("?after={next}") } });
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `GET /account-info/v3/details`: the portal's id and settings.
async fn account_info(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refused) = count_call(&shared, "account_info") {
        return refused;
    }
    let correlation_id = correlation_id(&shared);
    if !authorized(&shared, &headers) {
        return unauthorized(&correlation_id).1;
    }
    let portal_id = lock(&shared.knobs).portal_id;
    axum::Json(json!({
        "portalId": portal_id,
        "accountType": "STANDARD",
        "timeZone": "US/Eastern",
        "companyCurrency": "USD",
        "additionalCurrencies": [],
        "utcOffset": "-05:00",
        "utcOffsetMilliseconds": -18_000_000,
        "uiDomain": "app.hubspot.com",
        "dataHostingLocation": "na1",
    }))
    .into_response()
}

/// `GET /crm/v3/schemas`: the custom objects of the knob.
async fn schemas(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refused) = count_call(&shared, "schemas") {
        return refused;
    }
    let correlation_id = correlation_id(&shared);
    if !authorized(&shared, &headers) {
        return unauthorized(&correlation_id).1;
    }
    let portal = lock(&shared.knobs).portal_id;
    let results: Vec<Value> = lock(&shared.knobs)
        .schemas
        .iter()
        .map(|(name, id)| {
            json!({ "name": name, "objectTypeId": id, "fullyQualifiedName": format!("p{portal}_{name}"),
                    "labels": { "singular": name, "plural": name } })
        })
        .collect();
    axum::Json(json!({ "results": results })).into_response()
}

/// The object a request path names, as the store keeps it: standard objects by name
/// (their type ids too), custom objects by type id (their names too, as HubSpot takes
/// them).
fn object_of(shared: &Shared, path: &str) -> Option<ObjectType> {
    let object = path.parse::<ObjectType>().ok()?;
    if !object.needs_resolving() {
        return Some(object);
    }
    let knobs = lock(&shared.knobs);
    let portal = knobs.portal_id;
    knobs
        .schemas
        .iter()
        .find(|(name, _)| name == path || format!("p{portal}_{name}") == path)
        .and_then(|(_, id)| id.parse().ok())
}

fn apply_mutations(shared: &Shared, n: u64) {
    let due: Vec<Mutation> = {
        let mut knobs = lock(&shared.knobs);
        let (due, later) = knobs
            .mutations
            .drain(..)
            .partition(|m| m.after_request <= n);
        knobs.mutations = later;
        due
    };
    if due.is_empty() {
        return;
    }
    let lag = lock(&shared.knobs).lag;
    let mut store = lock(&shared.store);
    let now = Millis::now();
    for m in due {
        for id in m.ids {
            store.touch(&m.object, id, now, lag);
        }
    }
}

/// Whether this request is one too many for the last second; counts it if not.
fn over_rate_limit(shared: &Shared) -> bool {
    let Some(limit) = lock(&shared.knobs).rate_limit else {
        return false;
    };
    let now = Instant::now();
    let mut recent = lock(&shared.recent);
    while recent
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        recent.pop_front();
    }
    if recent.len() >= limit as usize {
        return true;
    }
    recent.push_back(now);
    false
}

fn random_fault(shared: &Shared) -> Option<Fault> {
    let random = lock(&shared.knobs).random;
    let mut rng = lock(&shared.rng);
    let roll: f64 = rng.random();
    if roll < random.server_error {
        let codes = [500, 502, 503, 504];
        return Some(Fault::Status(codes[rng.random_range(0..codes.len())]));
    }
    if roll < random.server_error + random.slow {
        return Some(Fault::Slow(random.slow_by));
    }
    if roll < random.server_error + random.slow + random.drop {
        return Some(Fault::Drop);
    }
    None
}

fn error(status: StatusCode, category: &str, message: &str, correlation_id: &str) -> Answer {
    let body = json!({
        "status": "error",
        "message": message,
        "correlationId": correlation_id,
        "category": category,
    });
    // The status goes into the response too: the other routes answer with it alone.
    (status, (status, axum::Json(body)).into_response())
}

fn correlation_id(shared: &Shared) -> String {
    let x: u128 = lock(&shared.rng).random();
    let h = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
