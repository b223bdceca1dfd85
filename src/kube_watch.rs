//! The watch loop behind the signer's caches of cluster objects (pods for node authorization,
//! namespace labels for routes): list then watch every object of a kind, re-listing with
//! backoff after errors, until shutdown.

use futures_util::StreamExt;
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
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
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
