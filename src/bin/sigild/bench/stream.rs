//! The streaming rows of `sigild bench`: the same `SignRaw` requests as the unary rows, sent
//! through `SignStream` with the client library's pipelining helper ([`SignPipeline`]) over the
//! benchmark's Unix sockets (verification on, and off). One stream per client, each on its own
//! thread and current-thread runtime (as the unary rows' callers), keeping [`WINDOW`] requests
//! in flight; the latency of a request is from its submission to its answer.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sigild::api::pb;
use sigild::client::SignPipeline;

use super::{Measure, Row, pooled, summarise};

/// Requests in flight per stream: enough to keep every worker session busy from one client,
/// far fewer than the daemon's bound per stream.
const WINDOW: usize = 16;

/// The stream rows for `m`: over `uds` (the daemon's verifying service) and `uds_unverified`.
///
/// # Errors
/// A client that could not connect or open its stream.
pub(super) async fn rows(
    uds: &Path,
    uds_unverified: &Path,
    m: &Measure,
) -> Result<Vec<Row>, String> {
    Ok(vec![
        row(uds.to_owned(), m, "gRPC stream UDS, verified").await?,
        row(uds_unverified.to_owned(), m, "gRPC stream UDS, unverified").await?,
    ])
}

/// `m.clients` streams over the socket at `path`, each on its own thread.
async fn row(path: PathBuf, m: &Measure, name: &'static str) -> Result<Row, String> {
    let mut threads = Vec::new();
    for _ in 0..m.clients {
        let (path, m) = (path.clone(), m.clone());
        threads.push(tokio::task::spawn_blocking(
            move || -> Result<(Vec<u64>, u64), String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(drive(&path, &m))
            },
        ));
    }
    let (all, errors) = pooled(threads).await?;
    Ok(summarise(m, name, all, errors))
}

/// Open one stream and keep [`WINDOW`] requests in flight on it: a short warm-up, then until
/// the measurement's end, recording each answered request's latency (ns).
async fn drive(path: &Path, m: &Measure) -> Result<(Vec<u64>, u64), String> {
    let channel = sigild::client::unix_channel(path)
        .await
        .map_err(|e| e.to_string())?;
    let pipeline = SignPipeline::open(
        pb::signing_service_client::SigningServiceClient::new(channel),
        WINDOW,
    )
    .await
    .map_err(|e| e.to_string())?;
    let req = || {
        pb::sign_stream_request::Request::Raw(pb::SignRawRequest {
            key: m.key.clone(),
            data: m.input.to_vec(),
            alg: String::new(),
            version: 0,
        })
    };
    for _ in 0..50 {
        if let Ok(p) = pipeline.submit(req()).await {
            let _ = p.signed().await;
        }
    }
    let (mut lat, mut errors) = (Vec::with_capacity(65536), 0u64);
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    let deadline = Instant::now() + m.duration;
    loop {
        while in_flight.len() < WINDOW && Instant::now() < deadline {
            let t = Instant::now();
            let pending = pipeline.submit(req()).await.map_err(|e| e.to_string())?;
            in_flight.push_back((t, pending));
        }
        let Some((t, pending)) = in_flight.pop_front() else {
            break;
        };
        match pending.signed().await {
            Ok(_) => lat.push(t.elapsed().as_nanos() as u64),
            Err(_) => errors += 1,
        }
    }
    Ok((lat, errors))
}
