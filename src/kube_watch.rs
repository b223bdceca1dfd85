//! The watch loop behind the signer's caches of cluster objects (pods for node authorization,
//! namespace labels for routes): list then watch every object of a kind, re-listing with
//! backoff after errors, until shutdown.

use futures_util::StreamExt;

/// Objects per list page. The Kubernetes client holds a whole page in memory while decoding it
/// (the body and a copy), about 2.2 times its size: 500 pods (the watcher's default) of 1 MiB
/// each took the process past 1 GiB. At 50, a page of the largest objects etcd stores
/// (1.5 MiB) stays near 165 MiB over the idle process, within the shipped 256Mi limit; a list
/// of 100,000 pods takes 2,000 requests.
pub const LIST_PAGE_SIZE: u32 = 10;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

/// Feeds every watch event of all `K` objects to `on_event` and every watch error to
/// `on_error` (the watcher then retries with backoff) until `shutdown` fires.
pub async fn each_event<K>(
    client: kube::Client,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    mut on_event: impl FnMut(Event<K>),
    mut on_error: impl FnMut(&watcher::Error),
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: kube::Api<K> = kube::Api::all(client);
    let stream = watcher::watcher(api, watcher::Config::default().page_size(LIST_PAGE_SIZE))
        .default_backoff();
    futures_util::pin_mut!(stream);
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = shutdown.changed() => return,
        };
        match event {
            None => return,
            Some(Err(e)) => on_error(&e),
            Some(Ok(event)) => on_event(event),
        }
    }
}
