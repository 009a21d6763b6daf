//! The page fetchers of one window's scan. They run as tasks ahead of delivery and send
//! pages down a bounded channel to the one consumer (`sync.rs`), which hands each page to
//! the sink and checkpoints it.
//!
//! The slices of a split window wait in [`Claims`], in id order. Search workers take
//! them from the top down, each paging keyed through its slice. In a backfill (a window
//! over all history) the list part takes them from the bottom up: it reads the list
//! endpoint, which counts against the general budget rather than search's, in id order,
//! and hands each record to the slice its id falls in. The two meet where the queue runs
//! out, so a backfill reads at both budgets at once (docs/ARCHITECTURE.md, "The window
//! engine"). A slice is scanned by one part only, and each part in ascending ids, so a
//! slice's checkpoint (the last id confirmed) means the same whoever scanned it: a
//! resumed window needs no memory of who did what.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Result;
use tokio::sync::mpsc;

use crate::hubspot::Client;
use crate::hubspot::search::{Page, SearchBody};
use crate::object::ObjectType;
use crate::record::{Record, RecordId};
use crate::window::{Slice, Window};

/// What a fetcher sends the consumer.
pub enum Fetched {
    Page { slice: u32, page: Page },
    Failed(anyhow::Error),
}

/// The slices not yet taken, lowest ids first.
pub struct Claims(Mutex<VecDeque<Slice>>);

impl Claims {
    pub fn new(mut slices: Vec<Slice>) -> Claims {
        // `None` (from the first id) sorts first.
        slices.sort_by_key(|s| s.after);
        Claims(Mutex::new(slices.into()))
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Slice>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slice with the highest ids left: search's next.
    pub fn take_top(&self) -> Option<Slice> {
        self.queue().pop_back()
    }

    /// The slice with the lowest ids left: the list part's next.
    pub fn take_bottom(&self) -> Option<Slice> {
        self.queue().pop_front()
    }
}

/// What a fetcher needs, owned (it runs as its own task).
pub struct Fetcher {
    pub client: Client,
    pub object: ObjectType,
    pub window: Window,
    /// The properties search (and the list part) ask for.
    pub search: Arc<[String]>,
    pub page_size: u32,
    /// With `--all-properties`, the properties batch read fetches for each page.
    pub hydrate: Option<Arc<[String]>>,
}

impl Fetcher {
    /// `page` with every property, when `hydrate` names them.
    pub async fn hydrated(&self, page: Page) -> Result<Page> {
        hydrated(&self.client, &self.object, page, self.hydrate.as_deref()).await
    }
}

/// A page with every property, when `hydrate` names them.
pub async fn hydrated(
    client: &Client,
    object: &ObjectType,
    mut page: Page,
    hydrate: Option<&[String]>,
) -> Result<Page> {
    if let Some(properties) = hydrate {
        page.records = client.hydrate(object, page.records, properties).await?;
    }
    Ok(page)
}

/// Takes slices from the top until none is left, paging keyed through each.
pub async fn search_worker(fetcher: Arc<Fetcher>, claims: Arc<Claims>, tx: mpsc::Sender<Fetched>) {
    while let Some(slice) = claims.take_top() {
        if !search_slice(&fetcher, slice, &tx).await {
            return;
        }
    }
}

/// Pages through one slice, sending each page to the consumer. False when a request
/// failed for good or the consumer hung up.
async fn search_slice(fetcher: &Fetcher, slice: Slice, tx: &mpsc::Sender<Fetched>) -> bool {
    let mut after = slice.resume_after();
    loop {
        let body = SearchBody::keyed(
            &fetcher.object,
            fetcher.window,
            &slice,
            after,
            &fetcher.search,
            fetcher.page_size,
        );
        let page = match fetcher.client.search(&fetcher.object, &body, after).await {
            Ok(page) => fetcher.hydrated(page).await,
            Err(e) => Err(e),
        };
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                let _ = tx.send(Fetched::Failed(error)).await;
                return false;
            }
        };
        let (last, more) = (page.last_id, page.more);
        let sent = tx
            .send(Fetched::Page {
                slice: slice.index,
                page,
            })
            .await;
        if sent.is_err() {
            return false;
        }
        if !more {
            return true;
        }
        after = last;
    }
}

/// The list part of a backfill: lists the object's records from the first id up,
/// taking slices from the bottom, until the listing ends or the next slice is
/// search's. Each list page is cut at slice ends; a slice is done once a record past
/// its end was listed (ids ascend) or the listing ended.
pub async fn list_part(fetcher: Arc<Fetcher>, claims: Arc<Claims>, tx: mpsc::Sender<Fetched>) {
    let Some(slice) = claims.take_bottom() else {
        return;
    };
    let mut part = ListPart {
        fetcher: &fetcher,
        tx: &tx,
        slice,
        kept: Vec::new(),
        reached: None,
    };
    if let Err(error) = part.run(&claims).await {
        let _ = tx.send(Fetched::Failed(error)).await;
    }
}

/// The part stops: the consumer hung up, or was told why.
struct Stop;

struct ListPart<'a> {
    fetcher: &'a Fetcher,
    tx: &'a mpsc::Sender<Fetched>,
    /// The slice the listing is in.
    slice: Slice,
    /// Its records listed since the last page sent, that fall in the window.
    kept: Vec<Record>,
    /// The last of its ids listed.
    reached: Option<RecordId>,
}

impl ListPart<'_> {
    async fn run(&mut self, claims: &Claims) -> Result<()> {
        let fetcher = self.fetcher;
        let (mut token, mut above) = (None::<String>, None::<RecordId>);
        loop {
            let (page, next) = fetcher
                .client
                .list_records(&fetcher.object, &fetcher.search, token.as_deref(), above)
                .await?;
            above = page.last_id.or(above);
            for record in page.records {
                // Every id up to the slice's end has been listed: it is done.
                while self.slice.upto.is_some_and(|upto| record.id > upto) {
                    let upto = self.slice.upto;
                    if self.send(upto, false).await.is_err() {
                        return Ok(());
                    }
                    match claims.take_bottom() {
                        Some(slice) => {
                            self.slice = slice;
                            self.reached = None;
                        }
                        // The rest is search's: the two parts met.
                        None => return Ok(()),
                    }
                }
                // At or below the checkpoint: confirmed already (the window's first
                // page). Outside the window: a later version, the next window's.
                if self.slice.resume_after().is_some_and(|a| record.id <= a) {
                    continue;
                }
                self.reached = Some(record.id);
                if (fetcher.window.lo..=fetcher.window.hi).contains(&record.modified) {
                    self.kept.push(record);
                }
            }
            token = next;
            // The listing ended: every id of the slice has been listed.
            let done = token.is_none();
            let last = self.reached.or(self.slice.resume_after());
            if self.send(last, !done).await.is_err() || done {
                return Ok(());
            }
        }
    }

    /// Sends what the slice holds so far, with `last_id` as its checkpoint.
    async fn send(&mut self, last_id: Option<RecordId>, more: bool) -> Result<(), Stop> {
        let page = Page {
            total: None,
            records: std::mem::take(&mut self.kept),
            last_id,
            more,
        };
        let page = match self.fetcher.hydrated(page).await {
            Ok(page) => page,
            Err(error) => {
                let _ = self.tx.send(Fetched::Failed(error)).await;
                return Err(Stop);
            }
        };
        self.tx
            .send(Fetched::Page {
                slice: self.slice.index,
                page,
            })
            .await
            .map_err(|_| Stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(index: u32, after: Option<u64>, upto: Option<u64>) -> Slice {
        Slice {
            index,
            after: after.map(RecordId),
            upto: upto.map(RecordId),
            last_id: None,
            done: false,
        }
    }

    #[test]
    fn search_takes_the_top_and_the_list_the_bottom_until_they_meet() {
        let claims = Claims::new(vec![
            slice(3, Some(200), None),
            slice(1, Some(0), Some(100)),
            slice(2, Some(100), Some(200)),
        ]);
        assert_eq!(claims.take_top().map(|s| s.index), Some(3));
        assert_eq!(claims.take_bottom().map(|s| s.index), Some(1));
        assert_eq!(claims.take_top().map(|s| s.index), Some(2));
        assert_eq!(claims.take_bottom(), None);
        assert_eq!(claims.take_top(), None);
    }
}
