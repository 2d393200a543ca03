//! The p11-kit peer row of `sigild bench`: an off-the-shelf remote PKCS#11 on the same token.
//! `p11-kit server` exports the bench's SoftHSM token on a Unix socket, and the very code path
//! of the "direct PKCS#11" row ([`super::direct_row`]) signs through `p11-kit-client.so`
//! instead of SoftHSM: each client thread has its own session, the server forwards every call
//! to SoftHSM. What separates this row from the direct one is p11-kit's RPC (a socket round
//! trip per PKCS#11 call, three calls per signature: `C_SignInit`, `C_Sign` for the length,
//! `C_Sign`), what separates it from sigild's rows is everything sigild adds (policy, audit,
//! verification, gRPC).
//!
//! The client module finds the server through `P11_KIT_SERVER_ADDRESS`, which the process sets
//! before any thread exists (see [`environment`] and `main`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sigild::backend::Backend as _;
use sigild::backend::pkcs11::{Pkcs11Backend, Pkcs11Settings};
use sigild::config::Pkcs11Config;
use sigild::jose::Alg;
use sigild::keyring::VersionInfo;

use crate::dev::DevPaths;

/// The row's name in the tables.
pub const PATH: &str = "p11-kit client";

/// Where Debian, Ubuntu and Fedora put the p11-kit client module.
const CLIENT_MODULES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/p11-kit-client.so",
    "/usr/lib64/pkcs11/p11-kit-client.so",
    "/usr/lib/pkcs11/p11-kit-client.so",
];

/// The server's socket in the bench's state directory.
fn socket(paths: &DevPaths) -> PathBuf {
    paths.dir.join("p11-kit.sock")
}

/// What the p11-kit client module must find in the environment: set by `main` while the
/// process is single-threaded.
pub fn environment(paths: &DevPaths) -> Vec<(&'static str, OsString)> {
    let mut address = OsString::from("unix:path=");
    address.push(socket(paths));
    vec![("P11_KIT_SERVER_ADDRESS", address)]
}

/// A running `p11-kit server` and a backend whose module is `p11-kit-client.so` talking to it.
/// Dropping it closes the client's sessions, then stops the server.
pub struct Peer {
    /// The backend on the client module (its workers stay idle: only direct signers are used).
    pub backend: Arc<Pkcs11Backend>,
    /// The server process (dropped after the backend is shut down).
    _server: Server,
}

impl Peer {
    /// Start `p11-kit server` exporting the token of `p11` (its module is the provider) and
    /// open a backend on `p11-kit-client.so` logged in with the same PIN. Blocks.
    ///
    /// # Errors
    /// Why the peer cannot run here (p11-kit missing, the server not starting, the token not
    /// reachable through it), for a "row skipped" line.
    pub fn start(paths: &DevPaths, p11: &Pkcs11Config) -> Result<Peer, String> {
        let client = CLIENT_MODULES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .ok_or("p11-kit-client.so not found (Debian: apt-get install p11-kit-modules)")?;
        let sock = socket(paths);
        let _ = std::fs::remove_file(&sock);
        let child = Command::new("p11-kit")
            .args(["server", "--foreground", "--provider"])
            .arg(&p11.module)
            .arg("--name")
            .arg(&sock)
            .arg(&p11.token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("p11-kit server: {e} (Debian: apt-get install p11-kit)"))?;
        let mut server = Server(child);
        let until = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if let Ok(Some(status)) = server.0.try_wait() {
                return Err(format!("p11-kit server exited at start ({status})"));
            }
            if Instant::now() > until {
                return Err("p11-kit server did not create its socket within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let settings = Pkcs11Settings {
            module: client.to_owned(),
            token: p11.token_uri()?,
            pin: p11.pin.read().map_err(|e| e.to_string())?,
            workers: 1,
            queue_depth: 1,
            max_abandoned_workers: 0,
        };
        let (backend, issue) =
            Pkcs11Backend::open(settings).map_err(|e| format!("p11-kit-client.so: {e}"))?;
        if let Some(e) = issue {
            backend.shutdown();
            return Err(format!("the token through p11-kit: {e}"));
        }
        Ok(Peer {
            backend: Arc::new(backend),
            _server: server,
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.backend.shutdown();
    }
}

/// One signature through the peer, so that an algorithm p11-kit's RPC cannot carry (0.24 has
/// no `CKM_EDDSA`) is reported once instead of as an error per call.
///
/// # Errors
/// Why the peer cannot sign with `version`'s key.
pub async fn can_sign(
    peer: &Peer,
    version: &Arc<VersionInfo>,
    alg: Alg,
    input: &Arc<Vec<u8>>,
) -> Result<(), String> {
    let (backend, version, input) = (
        Arc::clone(&peer.backend),
        Arc::clone(version),
        Arc::clone(input),
    );
    tokio::task::spawn_blocking(move || {
        backend
            .direct_signer(&version.key_id, version.kind)
            .and_then(|s| s.sign(&alg.sign_op(&input)))
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
