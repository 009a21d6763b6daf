//! Custom objects by name: `GET /crm/v3/schemas` lists the portal's custom objects with
//! their `name`, `fullyQualifiedName` (`p1234_pets`) and `objectTypeId` (`2-1234567`);
//! requests then go to the type id (HubSpot's custom objects guide: "To find the
//! objectTypeId ... GET /crm/v3/schemas"; scope `crm.schemas.custom.read`).

use anyhow::{Context, Result};
use reqwest::Method;
use serde::Deserialize;

use super::client::{Client, Limit};

/// One custom object: its names and its type id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    pub name: String,
    pub fully_qualified_name: String,
    pub type_id: String,
}

#[derive(Deserialize)]
struct Schemas {
    results: Vec<RawSchema>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSchema {
    name: String,
    #[serde(default)]
    fully_qualified_name: String,
    object_type_id: String,
}

impl Client {
    /// The portal's custom objects.
    ///
    /// # Errors
    /// As [`Client::search`].
    pub async fn schemas(&self) -> Result<Vec<Schema>> {
        let (schemas, _): (Schemas, _) = self
            .send(Method::GET, "/crm/v3/schemas", None::<&()>, Limit::General)
            .await
            .context("listing the portal's custom objects")?;
        Ok(schemas
            .results
            .into_iter()
            .map(|s| Schema {
                name: s.name,
                fully_qualified_name: s.fully_qualified_name,
                type_id: s.object_type_id,
            })
            .collect())
    }
}
