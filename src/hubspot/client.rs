//! The HTTP client: one shared reqwest client with timeouts, Bearer auth, the
//! pacers (one per budget) and the retry loop. Everything that calls HubSpot goes through
//! `Client::send`, so pacing and retries hold for every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{ApiError, Correlation, ErrorBody, RetryCause};
use super::pacer::{Pacer, headroom_from};
use super::retry::RetryPolicy;
use super::search::{Page, SearchBody, SearchResponse};
use crate::object::ObjectType;
use crate::record::RecordId;
use crate::token::Token;

/// How to reach HubSpot.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub base_url: String,
    pub token: Token,
    /// Search requests per second, for the whole process.
    pub rate_limit: f64,
    /// General-budget requests (list, batch read, properties) per second, for the whole
    /// process: headroom left for the portal's other apps.
    pub general_rate_limit: f64,
    /// Requests a day (UTC) this tool may make in all, counted in the state file.
    pub daily_budget: Option<u64>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// `--portal`: the portal the token must belong to, when given.
    pub portal: Option<u64>,
}

/// Request counters, shared by every user of one client.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
}

/// The first 128 bits of SHA-256 over the base URL and the token, in hex.
fn account_key(base_url: &str, token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(base_url.trim_end_matches('/'))
        .chain_update([0])
        .chain_update(token)
        .finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A HubSpot API client. Cheap to clone; clones share the connection pool, the token
/// bucket and the counters.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: Arc<str>,
    auth: HeaderValue,
    limiter: Arc<Pacer>,
    /// Every other endpoint (properties, batch read) counts against HubSpot's burst
    /// limit instead: 100 requests per 10 s on the smallest tier.
    general: Arc<Pacer>,
    /// After a 429, no request of this client goes out before this instant: HubSpot's
    /// search limit is per account, so every fetcher backs off together.
    cooldown: Arc<Mutex<Option<Instant>>>,
    /// What is left of `--daily-budget` today, shared like the pacing.
    allowance: Arc<Mutex<Allowance>>,
    retry: RetryPolicy,
    counters: Arc<Counters>,
    /// Names the (HubSpot, token) pair without the token: what a cached portal id is
    /// kept under.
    account: Arc<str>,
    /// The portal the token must belong to (`--portal`).
    portal: Option<u64>,
}

impl Client {
    /// Builds a client.
    ///
    /// # Errors
    /// When the token cannot go into an HTTP header or the TLS stack fails to start.
    pub fn new(config: &ClientConfig) -> Result<Client> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", config.token.expose()))
            .context("the token has characters that cannot go into an HTTP header")?;
        // Keeps the value out of reqwest's and hyper's debug output.
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .user_agent(concat!("martech-sync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10).min(config.timeout))
            .timeout(config.timeout)
            .build()
            .context("starting the HTTP client")?;
        Ok(Client {
            http,
            base_url: config.base_url.trim_end_matches('/').into(),
            auth,
            limiter: Arc::new(Pacer::new(config.rate_limit)),
            general: Arc::new(Pacer::new(config.general_rate_limit)),
            cooldown: Arc::default(),
            allowance: Arc::new(Mutex::new(Allowance {
                budget: config.daily_budget,
                day: None,
                left: 0,
            })),
            retry: config.retry,
            counters: Arc::default(),
            account: account_key(&config.base_url, config.token.expose()).into(),
            portal: config.portal,
        })
    }

    /// The key a cached portal id is kept under: a digest of the base URL and the
    /// token, from which neither can be read back.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The portal the token must belong to (`--portal`), when given.
    pub fn expected_portal(&self) -> Option<u64> {
        self.portal
    }

    /// A clone that shares the pacing (the budgets are the account's) but counts its own
    /// requests: one per object of a run, so each object's summary counts only its own.
    pub fn with_own_counters(&self) -> Client {
        Client {
            counters: Arc::default(),
            ..self.clone()
        }
    }

    /// The daily budget, when one is set.
    pub fn daily_budget(&self) -> Option<u64> {
        self.allowance().budget
    }

    /// Starts (or goes on with) the budget of `day`, of which `used` requests went out
    /// before this process counted: the first caller of a day sets what is left.
    pub fn start_day(&self, day: &str, used: u64) {
        let mut allowance = self.allowance();
        if let Some(budget) = allowance.budget
            && allowance.day.as_deref() != Some(day)
        {
            allowance.day = Some(day.to_owned());
            allowance.left =
                i64::try_from(budget).unwrap_or(i64::MAX) - i64::try_from(used).unwrap_or(i64::MAX);
        }
    }

    fn allowance(&self) -> std::sync::MutexGuard<'_, Allowance> {
        self.allowance
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one request from the daily budget.
    fn take_one(&self) -> Result<(), BudgetExhausted> {
        let mut allowance = self.allowance();
        match allowance.budget {
            Some(budget) if allowance.day.is_some() => {
                if allowance.left <= 0 {
                    return Err(BudgetExhausted { budget });
                }
                allowance.left -= 1;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The counters of every request this client (and its clones) made.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// One keyed search page of `object`, checked.
    ///
    /// # Errors
    /// An [`ApiError`] once retries are exhausted or the error is permanent, or a page
    /// that breaks the keyed-paging rules.
    pub async fn search(
        &self,
        object: &ObjectType,
        body: &SearchBody<'_>,
        after: Option<RecordId>,
    ) -> Result<Page> {
        let path = format!("/crm/v3/objects/{}/search", object.api_name());
        let (response, correlation_id): (SearchResponse, _) = self
            .send(Method::POST, &path, Some(body), Limit::Search)
            .await?;
        response
            .into_page(object, after, body.limit())
            .with_context(|| {
                format!(
                    "HubSpot sent a search page that cannot be used{}",
                    Correlation(&correlation_id)
                )
            })
    }

    /// The largest id search shows in `body` (a [`SearchBody::largest_id`]), if any.
    ///
    /// # Errors
    /// As [`Client::search`].
    pub async fn largest_id(
        &self,
        object: &ObjectType,
        body: &SearchBody<'_>,
    ) -> Result<Option<RecordId>> {
        let path = format!("/crm/v3/objects/{}/search", object.api_name());
        let (response, correlation_id): (SearchResponse, _) = self
            .send(Method::POST, &path, Some(body), Limit::Search)
            .await?;
        let Some(first) = response.results.first() else {
            return Ok(None);
        };
        let id = first.id.parse().with_context(|| {
            format!(
                "HubSpot sent a search page that cannot be used{}: id `{}` is not a number",
                Correlation(&correlation_id),
                first.id
            )
        })?;
        Ok(Some(RecordId(id)))
    }

    /// Sends `body` (if any) as JSON to `path` and decodes the answer, pacing against
    /// `limit` and retrying. Returns the answer and its correlation id.
    ///
    /// # Errors
    /// See [`Client::search`].
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        limit: Limit,
    ) -> Result<(T, Option<String>)> {
        let url = format!("{}{path}", self.base_url);
        // Serialised once for every attempt.
        let body = body.map(serde_json::to_vec).transpose()?;
        let limiter = match limit {
            Limit::Search => &self.limiter,
            Limit::General => &self.general,
        };
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.wait_for_cooldown().await;
            let sent = limiter.ready().await;
            self.take_one()?;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let error = match self.try_once(&method, &url, body.as_deref(), limiter).await {
                Ok(answer) => {
                    limiter.succeeded();
                    return Ok(answer);
                }
                Err(error) => error,
            };
            let Some(cause) = error.retry_cause() else {
                return Err(error.into());
            };
            let wait = self
                .retry
                .delay(attempt, cause, error.retry_after(), rand::random());
            let limited = matches!(cause, RetryCause::RateLimited | RetryCause::BurstLimited);
            if limited {
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                limiter.limited(sent);
            }
            if attempt >= self.retry.max_attempts {
                return Err(anyhow::Error::new(error)
                    .context(format!("giving up on {path} after {attempt} attempts")));
            }
            let budget = self.retry.budget_for(cause);
            if started.elapsed() + wait > budget {
                return Err(anyhow::Error::new(error).context(format!(
                    "giving up on {path}: the retry budget of {} would run out",
                    humantime::format_duration(budget)
                )));
            }
            if limited {
                let until = Instant::now() + wait;
                let mut cooldown = self.cooldown.lock().unwrap_or_else(PoisonError::into_inner);
                *cooldown = Some(cooldown.map_or(until, |c| c.max(until)));
            }
            // A retry that works is routine (a 429 on a shared account, a 502 at the
            // edge): INFO. The run counts them and warns when there are many (see
            // `sync.rs`); one that gives up is the run's error line.
            let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            tracing::info!(attempt, wait_ms, reason = %error, "retrying HubSpot request");
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }

    async fn wait_for_cooldown(&self) {
        let until = *self.cooldown.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(until) = until
            && until > Instant::now()
        {
            tokio::time::sleep_until(until.into()).await;
        }
    }

    async fn try_once<T: DeserializeOwned>(
        &self,
        method: &Method,
        url: &str,
        body: Option<&[u8]>,
        pacer: &Pacer,
    ) -> Result<(T, Option<String>), ApiError> {
        let mut request = self
            .http
            .request(method.clone(), url)
            .header(AUTHORIZATION, self.auth.clone());
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let response = request.send().await.map_err(|e| transport(url, e))?;
        let status = response.status();
        let headers = response.headers();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let correlation_id = header("x-hubspot-correlation-id");
        if let Some(headroom) = headroom_from(header) {
            pacer.headroom(headroom);
        }
        let content_type =
            header(CONTENT_TYPE.as_str()).unwrap_or_else(|| "no content type".into());
        // Capped at a day (HubSpot's 477 says "up to 24 hours"); the retry budget decides.
        let retry_after = header(RETRY_AFTER.as_str())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs.min(86_400)));
        let bytes = response.bytes().await.map_err(|e| transport(url, e))?;
        if !status.is_success() {
            let body = serde_json::from_slice::<ErrorBody>(&bytes)
                .ok()
                .filter(|b| b.message.is_some() || b.category.is_some());
            let snippet = body.is_none().then(|| snippet(&bytes)).flatten();
            return Err(ApiError::Status {
                status: status.as_u16(),
                body,
                snippet,
                correlation_id,
                retry_after,
            });
        }
        let value = serde_json::from_slice(&bytes).map_err(|source| ApiError::Malformed {
            content_type,
            correlation_id: correlation_id.clone(),
            source,
        })?;
        Ok((value, correlation_id))
    }
}

/// What is left of a daily budget.
#[derive(Debug)]
struct Allowance {
    budget: Option<u64>,
    /// The UTC day `left` is of, once a run started it.
    day: Option<String>,
    left: i64,
}

/// `--daily-budget` is used up for today: the run stops cleanly, its window open.
#[derive(Debug, thiserror::Error)]
#[error("the daily budget of {budget} requests (--daily-budget) is used up for today (UTC)")]
pub struct BudgetExhausted {
    pub budget: u64,
}

/// Whether `err` is (or wraps) a used-up daily budget.
pub fn is_budget_exhausted(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<BudgetExhausted>())
}

/// Which of HubSpot's limits a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// CRM search: about 5 a second per account (`--rate-limit`).
    Search,
    /// Everything else: the ten-second burst limit.
    General,
}

fn transport(url: &str, source: reqwest::Error) -> ApiError {
    let what = if source.is_timeout() {
        "timed out"
    } else if source.is_connect() {
        "could not connect"
    } else if source.is_body() || source.is_decode() {
        "body cut short"
    } else {
        "connection failed"
    };
    let url = url.split_once('?').map_or(url, |(path, _)| path).to_owned();
    ApiError::Transport { what, url, source }
}

/// The first line or so of a body that is not HubSpot's JSON, for the error message.
fn snippet(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let folded: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.is_empty() {
        return None;
    }
    Some(folded.chars().take(120).collect())
}
