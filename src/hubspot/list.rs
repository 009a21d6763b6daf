//! The list endpoint, `GET /crm/v3/objects/{object}`: every record of an object, 100 a
//! page, without the search index, so it sees what a lagging index hides. With
//! `archived=true` it lists the recycle bin: the records deleted in the last 90 days,
//! with `archivedAt` (docs/HUBSPOT.md §10). It counts against the general budget, not
//! search's. `paging.next.after` is echoed back as HubSpot sent it: the docs call it the
//! next record's id, the OpenAPI spec an opaque token.

use anyhow::{Context, Result};
use reqwest::Method;
use serde::Deserialize;

use super::client::{Client, Limit};
use super::error::Correlation;
use super::search::{Page, RawRecord, SearchResponse};
use crate::object::ObjectType;
use crate::record::RecordId;
use crate::timestamp::Millis;

/// HubSpot's largest list page.
pub const PAGE: u32 = 100;

/// Which records a listing holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// Live records.
    Live,
    /// Archived (deleted, restorable) records only.
    Archived,
}

/// One listed record: its id, modified time and, when archived, when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    pub id: RecordId,
    pub modified: Option<Millis>,
    pub archived_at: Option<Millis>,
}

/// One page of a listing.
#[derive(Debug)]
pub struct ListPage {
    pub records: Vec<Listed>,
    /// Where the next page starts; `None` on the last.
    pub next: Option<String>,
}

#[derive(Deserialize)]
struct ListResponse {
    results: Vec<RawRecord>,
    #[serde(default)]
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct Paging {
    next: Option<Next>,
}

#[derive(Deserialize)]
struct Next {
    after: String,
}

impl Client {
    /// One page of `object`'s live records with `properties`, in id order, after the
    /// token `after` HubSpot gave with the page before (`None` from the first record):
    /// the list part of a backfill. The ids must ascend, within the page and past
    /// `above` (the last id of the page before), or the page is refused.
    ///
    /// # Errors
    /// As [`Client::search`]: a page whose ids do not ascend, or a result without an
    /// id or a modified time.
    pub async fn list_records(
        &self,
        object: &ObjectType,
        properties: &[String],
        after: Option<&str>,
        above: Option<RecordId>,
    ) -> Result<(Page, Option<String>)> {
        let path = list_path(object, &properties.join(","), Listing::Live, after);
        let (response, correlation_id): (SearchResponse, _) = self
            .send(Method::GET, &path, None::<&()>, Limit::General)
            .await?;
        let next = response
            .paging
            .as_ref()
            .and_then(|p| p.next.as_ref())
            .and_then(|n| n.get("after"))
            .and_then(|a| a.as_str())
            .filter(|a| !a.is_empty())
            .map(str::to_owned);
        let mut page = response.into_page(object, above, 0).with_context(|| {
            format!(
                "HubSpot sent a list page that cannot be used{}",
                Correlation(&correlation_id)
            )
        })?;
        // Only HubSpot's token says more follow: a full page is no hint without one.
        page.more = next.is_some();
        Ok((page, next))
    }

    /// One page of `object`'s `listing` after `after`, with the modified property.
    ///
    /// # Errors
    /// As [`Client::search`]; a result without a numeric id.
    pub async fn list_page(
        &self,
        object: &ObjectType,
        listing: Listing,
        after: Option<&str>,
    ) -> Result<ListPage> {
        let path = list_path(object, object.modified_property(), listing, after);
        let (response, correlation_id): (ListResponse, _) = self
            .send(Method::GET, &path, None::<&()>, Limit::General)
            .await?;
        let records = response
            .results
            .into_iter()
            .map(|raw| {
                let id = raw.id.parse::<u64>().with_context(|| {
                    format!(
                        "HubSpot sent a list page that cannot be used{}: id `{}` is not a number",
                        Correlation(&correlation_id),
                        raw.id
                    )
                })?;
                let modified = raw
                    .properties
                    .get(object.modified_property())
                    .and_then(|v| v.as_str())
                    .and_then(Millis::parse_hubspot)
                    .or_else(|| Millis::parse_hubspot(&raw.updated_at));
                let archived_at = raw.archived_at.as_deref().and_then(Millis::parse_hubspot);
                Ok(Listed {
                    id: RecordId(id),
                    modified,
                    archived_at,
                })
            })
            .collect::<Result<_>>()?;
        let next = response
            .paging
            .and_then(|p| p.next)
            .map(|n| n.after)
            .filter(|a| !a.is_empty());
        Ok(ListPage { records, next })
    }
}

/// The path of a list page: `properties` comma-separated, `after` HubSpot's token.
fn list_path(
    object: &ObjectType,
    properties: &str,
    listing: Listing,
    after: Option<&str>,
) -> String {
    // Built before any await: the serializer is not `Send`.
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("limit", &PAGE.to_string());
    query.append_pair("properties", properties);
    let archived = if listing == Listing::Archived {
        "true"
    } else {
        "false"
    };
    query.append_pair("archived", archived);
    if let Some(after) = after {
        query.append_pair("after", after);
    }
    format!("/crm/v3/objects/{}?{}", object.api_name(), query.finish())
}
