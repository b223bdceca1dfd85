//! A KV version 2 mount as the issued-certificate ledger uses it: write a value, read it,
//! list a folder, delete a key with all its versions. Paths are built from parts the caller
//! checked ([`KvPath`]); values are JSON objects.

use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::kv_path::KvPath;

use super::wire::Envelope;
use super::{VaultClient, VaultError};

#[derive(Serialize)]
struct WriteBody<'a, T> {
    data: &'a T,
}

#[derive(Deserialize)]
struct ReadData<T> {
    data: Option<T>,
}

#[derive(Deserialize)]
struct ListData {
    #[serde(default)]
    keys: Vec<String>,
}

impl VaultClient {
    fn kv_url(
        &self,
        mount: &str,
        kind: &str,
        path: &KvPath,
        folder: bool,
    ) -> Result<Url, VaultError> {
        let slash = if folder { "/" } else { "" };
        self.api_url(&format!("{mount}/{kind}/{}{slash}", path.as_str()))
    }

    /// Writes `value` as the newest version of `path` (`POST <mount>/data/<path>`).
    pub async fn kv_put<T: Serialize>(
        &self,
        mount: &str,
        path: &KvPath,
        value: &T,
    ) -> Result<(), VaultError> {
        let url = self.kv_url(mount, "data", path, false)?;
        let req = self
            .request(reqwest::Method::POST, url)
            .json(&WriteBody { data: value });
        let _: serde_json::Value = self.send("kv_put", req).await?;
        Ok(())
    }

    /// The newest version of `path`, `None` when there is none (or it was deleted).
    pub async fn kv_get<T: DeserializeOwned>(
        &self,
        mount: &str,
        path: &KvPath,
    ) -> Result<Option<T>, VaultError> {
        let url = self.kv_url(mount, "data", path, false)?;
        match self
            .send::<Envelope<ReadData<T>>>("kv_get", self.request(reqwest::Method::GET, url))
            .await
        {
            Ok(env) => Ok(env.data.and_then(|d| d.data)),
            Err(VaultError::Unexpected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The keys in folder `path` (`LIST <mount>/metadata/<path>/`); sub-folders end in `/`.
    /// An empty or missing folder is an empty list.
    pub async fn kv_list(&self, mount: &str, path: &KvPath) -> Result<Vec<String>, VaultError> {
        let mut url = self.kv_url(mount, "metadata", path, true)?;
        url.set_query(Some("list=true"));
        match self
            .send::<Envelope<ListData>>("kv_list", self.request(reqwest::Method::GET, url))
            .await
        {
            Ok(env) => Ok(env.data.map(|d| d.keys).unwrap_or_default()),
            // Vault answers an empty LIST with 404.
            Err(VaultError::Unexpected { status: 404, .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Deletes `path` with every version and its metadata (`DELETE <mount>/metadata/<path>`).
    pub async fn kv_delete(&self, mount: &str, path: &KvPath) -> Result<(), VaultError> {
        let url = self.kv_url(mount, "metadata", path, false)?;
        match self
            .send::<serde_json::Value>("kv_delete", self.request(reqwest::Method::DELETE, url))
            .await
        {
            Ok(_) | Err(VaultError::Unexpected { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
