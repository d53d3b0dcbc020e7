//! Paginated listings: the cloud targets fetch a page at a time and hand out
//! its objects as one stream.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;

use atlas_core::Result;
use atlas_core::backup::{ListOptions, ObjectKey, ObjectMeta, ObjectPrefix};
use futures::stream::{self, BoxStream, StreamExt};
use tracing::debug;

/// A service that lists a bucket a page at a time; [`list`] streams it.
pub(crate) trait Listing: Send + Sync + 'static {
    /// What names the next page: a continuation token, a marker.
    type Token: Send + 'static;
    /// The most objects the service returns in one page.
    const MAX_PAGE: u32;

    /// One page of the objects under `prefix`, at most `page` of them:
    /// the first when `token` is `None`, and only keys after `start_after`.
    fn list_page(
        &self,
        prefix: &str,
        page: u32,
        token: Option<Self::Token>,
        start_after: Option<&str>,
    ) -> impl Future<Output = Result<Page<Self::Token>>> + Send;
}

/// Every object under `prefix` in `bucket` (a container on Azure), page by
/// page, as the contract's listing.
pub(crate) fn list<L: Listing>(
    lister: Arc<L>,
    backend: &'static str,
    bucket: &str,
    prefix: &ObjectPrefix,
    options: ListOptions,
) -> BoxStream<'static, Result<ObjectMeta>> {
    let prefix = prefix.to_string();
    let page = page_size(&options, L::MAX_PAGE);
    let start_after = options.start_after.map(|k| k.to_string());
    debug!(backend, bucket, %prefix, page, "list");
    paginate(move |token| {
        let lister = lister.clone();
        let prefix = prefix.clone();
        let start_after = start_after.clone();
        async move {
            lister
                .list_page(&prefix, page, token, start_after.as_deref())
                .await
        }
    })
}

/// One page of a listing: its objects and the token of the next page
/// (`None` on the last).
pub(crate) struct Page<T> {
    pub(crate) items: Vec<Result<ObjectMeta>>,
    pub(crate) next: Option<T>,
}

/// The page size to ask for: the caller's, at most the service's `max`.
fn page_size(options: &ListOptions, max: u32) -> u32 {
    options.page_size.map_or(max, NonZeroU32::get).min(max)
}

/// The objects of every page: `fetch(None)` fetches the first page,
/// `fetch(Some(token))` the next ones, until a page has no next token. A
/// failed page ends the stream with its error.
fn paginate<T, F, Fut>(fetch: F) -> BoxStream<'static, Result<ObjectMeta>>
where
    T: Send + 'static,
    F: FnMut(Option<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Page<T>>> + Send,
{
    // State: None = finished; Some(token) = the next page to fetch.
    stream::unfold((Some(None::<T>), fetch), |(state, mut fetch)| async move {
        let token = state?;
        match fetch(token).await {
            Ok(page) => Some((page.items, (page.next.map(Some), fetch))),
            Err(e) => Some((vec![Err(e)], (None, fetch))),
        }
    })
    .flat_map(stream::iter)
    .boxed()
}

/// The key of a listed object, or `None` (logged) for a name Atlas cannot
/// address, which a listing skips.
pub(crate) fn listed_key(name: &str) -> Option<ObjectKey> {
    match ObjectKey::new(name) {
        Ok(k) => Some(k),
        Err(_) => {
            debug!(name, "skipping an object whose name Atlas cannot address");
            None
        }
    }
}

/// Whether a listed `name` comes at or before `start_after`, for services
/// that cannot start a listing after a key (or start at it, inclusively).
#[cfg(any(feature = "gcs", feature = "azure"))]
pub(crate) fn before_start(name: &str, start_after: Option<&str>) -> bool {
    start_after.is_some_and(|a| name <= a)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use atlas_core::Error;
    use futures::TryStreamExt;

    use super::*;

    fn meta(name: &str) -> Result<ObjectMeta> {
        Ok(ObjectMeta::new(
            ObjectKey::new(name).unwrap(),
            1,
            SystemTime::UNIX_EPOCH,
        ))
    }

    #[tokio::test]
    async fn pages_are_fetched_in_turn_until_the_last() {
        let listed: Vec<ObjectMeta> = paginate(|token: Option<u32>| async move {
            let n = token.unwrap_or(0);
            Ok(Page {
                items: vec![meta(&format!("k{n}a")), meta(&format!("k{n}b"))],
                next: (n < 2).then_some(n + 1),
            })
        })
        .try_collect()
        .await
        .unwrap();
        let names: Vec<String> = listed.iter().map(|m| m.key.to_string()).collect();
        assert_eq!(names, ["k0a", "k0b", "k1a", "k1b", "k2a", "k2b"]);
    }

    #[tokio::test]
    async fn a_failed_page_ends_the_listing_with_its_error() {
        let out: Vec<Result<ObjectMeta>> = paginate(|token: Option<u32>| async move {
            match token {
                None => Ok(Page {
                    items: vec![meta("a")],
                    next: Some(1),
                }),
                Some(_) => Err(Error::transient("test", "page 2")),
            }
        })
        .collect()
        .await;
        assert_eq!(out.len(), 2);
        assert!(out[1].as_ref().is_err_and(|e| e.is_transient()));
    }

    #[test]
    fn page_sizes_are_capped_and_bad_names_skipped() {
        assert_eq!(page_size(&ListOptions::default(), 1000), 1000);
        let small = ListOptions::default().with_page_size(NonZeroU32::new(7).unwrap());
        assert_eq!(page_size(&small, 1000), 7);
        let big = ListOptions::default().with_page_size(NonZeroU32::new(9000).unwrap());
        assert_eq!(page_size(&big, 5000), 5000);
        assert!(listed_key("a/b").is_some());
        assert!(listed_key("a//b").is_none());
    }
}
