//! The portal a token belongs to: `GET /account-info/v3/details` answers its
//! `portalId` (HubSpot's account information API, docs/HUBSPOT.md §15; any token may
//! call it). Rows in the user's database are keyed by it, so one database holds many
//! portals.

use anyhow::{Context, Result};
use reqwest::Method;
use serde::Deserialize;

use super::client::{Client, Limit};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Details {
    portal_id: u64,
}

impl Client {
    /// The id of the portal (HubSpot account) the token belongs to.
    ///
    /// # Errors
    /// As [`Client::search`].
    pub async fn portal_id(&self) -> Result<u64> {
        let (details, _): (Details, _) = self
            .send(
                Method::GET,
                "/account-info/v3/details",
                None::<&()>,
                Limit::General,
            )
            .await
            .context("reading the portal id (account-info)")?;
        Ok(details.portal_id)
    }
}
