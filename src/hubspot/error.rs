//! `ApiError`: everything that can go wrong talking to HubSpot, typed where the retry
//! loop must branch. Display gives one line with HubSpot's own message, category and
//! correlation id, and never the token.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// HubSpot's error body (docs/HUBSPOT.md §9). Every field is optional, as HubSpot says.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub message: Option<String>,
    pub category: Option<String>,
    pub correlation_id: Option<String>,
    pub policy_name: Option<String>,
    #[serde(default)]
    pub errors: Vec<ErrorDetail>,
}

/// One entry of an error body's `errors`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    #[serde(default)]
    pub context: ErrorContext,
}

/// What a `MISSING_SCOPES` 403 says is needed (older bodies name `requiredScopes`, newer
/// ones `requiredGranularScopes`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorContext {
    #[serde(default)]
    pub required_scopes: Vec<String>,
    #[serde(default)]
    pub required_granular_scopes: Vec<String>,
}

/// A failed exchange with HubSpot.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// HubSpot, or a proxy in front of it, answered with an error status.
    #[error("{}", StatusLine { status: *status, body, snippet, correlation_id })]
    Status {
        status: u16,
        body: Option<ErrorBody>,
        /// The start of a body that is not HubSpot's JSON (a proxy's HTML page).
        snippet: Option<String>,
        correlation_id: Option<String>,
        retry_after: Option<Duration>,
    },
    /// No complete answer: connection refused or reset, timeout, a body cut short.
    #[error("no complete answer from HubSpot at {url} ({what})")]
    Transport {
        what: &'static str,
        /// Where the request went (the base URL and path, no query).
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx answer whose body is not the JSON HubSpot documents (not JSON at all, or
    /// missing a required field such as a result's `id`).
    #[error(
        "HubSpot sent a page that cannot be read ({content_type}){}",
        Correlation(correlation_id)
    )]
    Malformed {
        content_type: String,
        correlation_id: Option<String>,
        #[source]
        source: serde_json::Error,
    },
}

/// Why a retry is being made; decides the backoff floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryCause {
    /// 429 for the per-second search limit (or with no policy named).
    RateLimited,
    /// 429 for the ten-second burst limit.
    BurstLimited,
    /// 5xx, 423, 477 and friends.
    ServerError,
    /// Timeouts, resets, truncated bodies.
    Transport,
    /// No connection at all (refused, no route, DNS): given up on within a minute, since
    /// a wrong --base-url or a down network rarely fixes itself in the retry budget.
    Unreachable,
}

impl ApiError {
    /// Whether trying the same request again can succeed (`Some`), and why.
    pub fn retry_cause(&self) -> Option<RetryCause> {
        match self {
            // The daily limit resets at midnight in the account's time zone: retrying
            // only burns what the portal's other apps have left (docs/HUBSPOT.md §15).
            ApiError::Status { status: 429, .. } if self.is_daily_limit() => None,
            ApiError::Status {
                status: 429, body, ..
            } => {
                let policy = body.as_ref().and_then(|b| b.policy_name.as_deref());
                Some(if policy == Some("TEN_SECONDLY_ROLLING") {
                    RetryCause::BurstLimited
                } else {
                    RetryCause::RateLimited
                })
            }
            // 408 timeout, 423 locked, 477 migration; 5xx except the ones HubSpot says
            // need support.
            ApiError::Status {
                status: 408 | 423 | 477 | 500 | 502 | 503 | 504 | 521 | 523 | 524,
                ..
            } => Some(RetryCause::ServerError),
            ApiError::Status { .. } | ApiError::Malformed { .. } => None,
            ApiError::Transport { source, .. } if source.is_connect() => {
                Some(RetryCause::Unreachable)
            }
            ApiError::Transport { .. } => Some(RetryCause::Transport),
        }
    }

    /// The wait HubSpot asked for, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the token was refused: retrying on a later tick cannot help either. 530
    /// is what HubSpot's edge (Cloudflare) answers for a malformed token (Airbyte's
    /// source-hubspot `streams.py`, docs/HUBSPOT.md §15).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ApiError::Status {
                status: 401 | 403 | 530,
                ..
            }
        )
    }

    /// Whether this is the account's daily limit (a 429 with `policyName` `DAILY`).
    pub fn is_daily_limit(&self) -> bool {
        matches!(
            self,
            ApiError::Status { status: 429, body: Some(body), .. }
                if body.policy_name.as_deref() == Some("DAILY")
        )
    }
}

/// Whether `err` is (or wraps) a refused token: a later attempt cannot help.
pub fn is_auth_failure(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<ApiError>().is_some_and(ApiError::is_auth))
}

/// The scopes HubSpot asks for when `err` is (or wraps) a 403 `MISSING_SCOPES`: the
/// token cannot read the object at all. `Some(empty)` when HubSpot named none.
pub fn missing_scopes(err: &anyhow::Error) -> Option<Vec<String>> {
    err.chain()
        .find_map(|e| match e.downcast_ref::<ApiError>()? {
            ApiError::Status {
                status: 403,
                body: Some(body),
                ..
            } if body.category.as_deref() == Some("MISSING_SCOPES") => Some(
                body.errors
                    .iter()
                    .flat_map(|d| {
                        if d.context.required_granular_scopes.is_empty() {
                            d.context.required_scopes.clone()
                        } else {
                            d.context.required_granular_scopes.clone()
                        }
                    })
                    .collect(),
            ),
            _ => None,
        })
}

/// Whether `err` is (or wraps) the account's daily limit: nothing works before it
/// resets, so loops wait for their next tick instead of retrying.
pub fn is_daily_limit(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<ApiError>()
            .is_some_and(ApiError::is_daily_limit)
    })
}

struct StatusLine<'a> {
    status: u16,
    body: &'a Option<ErrorBody>,
    snippet: &'a Option<String>,
    correlation_id: &'a Option<String>,
}

impl fmt::Display for StatusLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = reqwest::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let daily = self.status == 429
            && self
                .body
                .as_ref()
                .is_some_and(|b| b.policy_name.as_deref() == Some("DAILY"));
        if daily {
            f.write_str(
                "HubSpot's daily API limit for this account is used up; nothing is retried \
                 before it resets at midnight in the account's time zone. ",
            )?;
        }
        write!(f, "HubSpot answered {} {reason}", self.status)?;
        if self.status == 530 {
            f.write_str(" (HubSpot's edge answers 530 to a malformed token: check HUBSPOT_TOKEN)")?;
        }
        match (self.body, self.snippet) {
            (Some(body), _) => {
                if let Some(message) = &body.message {
                    write!(f, ": {message}")?;
                }
                if let Some(category) = &body.category {
                    write!(f, " [{category}]")?;
                }
            }
            (None, Some(snippet)) => write!(f, " with a non-HubSpot body: {snippet:?}")?,
            (None, None) => {}
        }
        let id = self
            .body
            .as_ref()
            .and_then(|b| b.correlation_id.as_ref())
            .or(self.correlation_id.as_ref());
        write!(f, "{}", Correlation(&id.cloned()))
    }
}

/// ` (correlation id X)`, or nothing.
pub(crate) struct Correlation<'a>(pub &'a Option<String>);

impl fmt::Display for Correlation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " (correlation id {id})"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, body: &str) -> ApiError {
        ApiError::Status {
            status: code,
            body: serde_json::from_str(body).ok(),
            snippet: None,
            correlation_id: Some("hdr-id".into()),
            retry_after: None,
        }
    }

    #[test]
    fn retry_decisions() {
        let cases = [
            (429, "{}", Some(RetryCause::RateLimited)),
            (
                429,
                r#"{"policyName":"TEN_SECONDLY_ROLLING"}"#,
                Some(RetryCause::BurstLimited),
            ),
            (502, "", Some(RetryCause::ServerError)),
            (500, "{}", Some(RetryCause::ServerError)),
            (400, "{}", None),
            (401, "{}", None),
            (403, "{}", None),
            (404, "{}", None),
            (522, "{}", None),
            (530, "", None),
            (408, "", Some(RetryCause::ServerError)),
            (
                429,
                r#"{"message":"You have reached your daily limit.","policyName":"DAILY"}"#,
                None,
            ),
        ];
        for (code, body, want) in cases {
            assert_eq!(status(code, body).retry_cause(), want, "{code} {body}");
        }
    }

    #[test]
    fn the_daily_limit_says_so() {
        let e = status(
            429,
            r#"{"status":"error","message":"You have reached your daily limit.","errorType":"RATE_LIMIT","correlationId":"c033","policyName":"DAILY"}"#,
        );
        assert!(e.is_daily_limit());
        let line = e.to_string();
        assert!(
            line.starts_with("HubSpot's daily API limit for this account is used up"),
            "{line}"
        );
        assert!(
            line.contains("You have reached your daily limit. (correlation id c033)"),
            "{line}"
        );
        assert!(status(530, "").is_auth());
    }

    #[test]
    fn one_line_with_hubspot_message_and_correlation_id() {
        let e = status(
            401,
            r#"{"status":"error","message":"Authentication credentials not found.","correlationId":"abc-123","category":"INVALID_AUTHENTICATION"}"#,
        );
        assert_eq!(
            e.to_string(),
            "HubSpot answered 401 Unauthorized: Authentication credentials not found. \
             [INVALID_AUTHENTICATION] (correlation id abc-123)"
        );
    }
}
