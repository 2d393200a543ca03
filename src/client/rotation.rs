//! The client side of rotation an OP can follow: watching the key set, signing with a named
//! version (within its grace period after it stopped being active), and signatures over
//! digests for integrations whose seam passes one (Go `crypto.Signer`, .NET, Java).

use super::{Client, Result};
use crate::api::pb;

impl Client {
    /// `WatchKeys`: the key set of `names` (empty: every key) at once, then again at every
    /// change (rotation, activation, retirement, made through any replica on the same token),
    /// so a caller re-publishes its JWKS and switches kids without polling. The stream ends
    /// when the daemon shuts down: reconnect (to another instance) and watch again.
    ///
    /// # Errors
    /// [`super::ClientError::Status`]: `NOT_FOUND` for a name that is no key,
    /// `RESOURCE_EXHAUSTED` when the daemon's watcher slots are taken.
    pub async fn watch_keys(&self, names: &[&str]) -> Result<tonic::Streaming<pb::KeySet>> {
        let req = pb::WatchKeysRequest {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        };
        Ok(self.keys.clone().watch_keys(req).await?.into_inner())
    }

    /// `SignRaw` with a named version (0: the active one): a version that is not active
    /// signs only within the daemon's grace period after it stopped being active, else
    /// `FAILED_PRECONDITION` naming the active kid.
    ///
    /// # Errors
    /// [`super::ClientError::Status`] with the daemon's code.
    pub async fn sign_raw_version(
        &self,
        key: &str,
        data: &[u8],
        alg: Option<&str>,
        version: u32,
    ) -> Result<pb::SignRawResponse> {
        let req = pb::SignRawRequest {
            version,
            key: key.into(),
            data: data.to_vec(),
            alg: alg.unwrap_or_default().into(),
        };
        Ok(self.signing.clone().sign_raw(req).await?.into_inner())
    }

    /// `SignDigest`: a signature over `digest`, the caller's hash of its message (32 bytes for
    /// ES256/PS256/RS256, 48 for ES384/PS384), with `alg` (the key's own when `None`) and
    /// `version` (0: the active one). The caller needs the `digest` operation.
    ///
    /// # Errors
    /// [`super::ClientError::Status`]: `INVALID_ARGUMENT` for another alg or a digest of the
    /// wrong length, `PERMISSION_DENIED` without the grant.
    pub async fn sign_digest(
        &self,
        key: &str,
        digest: &[u8],
        alg: Option<&str>,
        version: u32,
    ) -> Result<pb::SignRawResponse> {
        let req = pb::SignDigestRequest {
            key: key.into(),
            alg: alg.unwrap_or_default().into(),
            digest: digest.to_vec(),
            version,
        };
        Ok(self.signing.clone().sign_digest(req).await?.into_inner())
    }
}
