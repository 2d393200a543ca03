//! `SignStream`: many signing requests in flight on one HTTP/2 stream. Each item is answered by
//! the very unary handler of its kind (`SignJws`, `SignRaw`, `SignIdToken`, …), called with the
//! stream's connection identity, so it is authenticated, authorised, audited (its own request
//! id and record), signed and verified exactly as the unary RPC would be; a failed item becomes
//! an error answer carrying the status that RPC would have returned, and fails nothing else.
//!
//! Owns the stream's own rules: how many items run at once ([`MAX_IN_FLIGHT`]; the stream is
//! not read further until one is answered, so HTTP/2 flow control holds a fast caller back,
//! and answers wait for a slow reader the same way), ids in flight must differ, a frame that
//! cannot be decoded or is too large ends the stream, a caller that goes away cancels what is
//! in flight, and a shutdown first stops reading, then answers what is in flight, then ends the
//! stream UNAVAILABLE ([`Drain`]). Never touches the service, policy or audit directly: those
//! are the unary handlers' business.

use std::collections::{HashMap, HashSet};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic::{Request, Status};

use super::pb::sign_stream_request::Request as Item;
use super::pb::sign_stream_response::Result as Answer;
use super::pb::signing_service_server::SigningService as _;
use super::{Api, REQUEST_ID, pb};

/// Items of one stream being signed at once. Enough to keep a worker pool busy from one
/// caller (the device, not this bound, is what limits a stream), few enough that a single
/// stream cannot fill the device queue on its own.
pub const MAX_IN_FLIGHT: usize = 64;

/// The stream of answers handed to tonic.
pub(super) type Answers = std::pin::Pin<
    Box<
        dyn tokio_stream::Stream<Item = std::result::Result<pb::SignStreamResponse, Status>> + Send,
    >,
>;

/// How a stream learns about a shutdown: `stop` when the daemon stops accepting (read no
/// more, finish what is in flight), `cancel` when the grace period is over (answer what is
/// still in flight UNAVAILABLE). Both stay `false` for an API built without
/// [`Api::draining`] (tests, benchmarks), whose streams then end only with their callers.
#[derive(Clone)]
pub struct Drain {
    /// Becomes `true` when the servers stop accepting.
    stop: watch::Receiver<bool>,
    /// Becomes `true` when the grace period is over.
    cancel: watch::Receiver<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        // The senders are dropped at once: `wait_for` then fails, which the select loop treats
        // as "never".
        Drain {
            stop: watch::channel(false).1,
            cancel: watch::channel(false).1,
        }
    }
}

impl Drain {
    /// The shutdown signals of the servers ([`crate::server`]).
    pub fn new(stop: watch::Receiver<bool>, cancel: watch::Receiver<bool>) -> Drain {
        Drain { stop, cancel }
    }
}

/// Completes once `flag` is `true`; never when its sender is gone without having said so.
async fn raised(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Api {
    /// Open a `SignStream`: authenticate the caller once (an unauthenticated stream is refused
    /// before any item is read), then serve the items on a task of their own.
    ///
    /// # Errors
    /// UNAUTHENTICATED, as every RPC.
    pub(super) fn open_sign_stream(
        &self,
        req: Request<tonic::Streaming<pb::SignStreamRequest>>,
    ) -> std::result::Result<tonic::Response<Answers>, Status> {
        let origin = self.origin(&req)?;
        let (_, extensions, inbound) = req.into_parts();
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let (api, stream_id, mut drain) =
            (self.clone(), origin.request_id.clone(), self.drain.clone());
        tracing::debug!(request_id = %origin.request_id, caller = %origin.caller, "sign stream opened");
        tokio::spawn(async move {
            let end = api.serve_stream(extensions, inbound, &tx).await;
            if let Some(status) = end {
                // Waits for a caller that reads slowly, but not past the grace period.
                tokio::select! {
                    biased;
                    _ = tx.send(Err(status)) => {}
                    () = raised(&mut drain.cancel) => {}
                }
            }
            tracing::debug!(request_id = %stream_id, "sign stream closed");
        });
        Ok(super::respond(
            &origin,
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as Answers,
        ))
    }

    /// Read, run and answer items until the caller half-closes (and everything is answered),
    /// goes away, breaks the protocol, or the daemon shuts down. Returns the status to end the
    /// stream with (`None`: OK, or nobody left to tell).
    async fn serve_stream(
        &self,
        extensions: http::Extensions,
        mut inbound: tonic::Streaming<pb::SignStreamRequest>,
        tx: &mpsc::Sender<std::result::Result<pb::SignStreamResponse, Status>>,
    ) -> Option<Status> {
        let mut drain = self.drain.clone();
        let mut running: JoinSet<pb::SignStreamResponse> = JoinSet::new();
        // Item id by task id, to answer an item whose task panicked or is cut off.
        let mut tasks: HashMap<tokio::task::Id, u64> = HashMap::new();
        let mut in_flight: HashSet<u64> = HashSet::new();
        let mut reading = true;
        let mut end: Option<Status> = None;
        loop {
            if !reading && running.is_empty() {
                return end;
            }
            tokio::select! {
                biased;
                () = tx.closed() => return None,
                () = raised(&mut drain.cancel), if !running.is_empty() => {
                    // The grace period is over: what is still running is given up, and told so
                    // as far as the caller reads (a caller that does not read is not waited for).
                    running.abort_all();
                    for id in in_flight.drain() {
                        let answer = failed(id, String::new(), &Status::unavailable(crate::server::SHUTTING_DOWN));
                        if tx.try_send(Ok(answer)).is_err() {
                            break;
                        }
                    }
                    return Some(Status::unavailable(crate::server::SHUTTING_DOWN));
                }
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let answer = match done {
                        Ok((task, answer)) => {
                            tasks.remove(&task);
                            answer
                        }
                        Err(e) => {
                            let Some(id) = tasks.remove(&e.id()) else { continue };
                            tracing::error!(id, error = %e, "sign stream item failed");
                            failed(id, String::new(), &Status::internal("the request failed inside the daemon"))
                        }
                    };
                    in_flight.remove(&answer.id);
                    if !self.send(tx, answer, &mut drain).await {
                        return None;
                    }
                }
                () = raised(&mut drain.stop), if reading => {
                    reading = false;
                    end = Some(Status::unavailable(crate::server::SHUTTING_DOWN));
                }
                next = inbound.message(), if reading && running.len() < MAX_IN_FLIGHT => {
                    match next {
                        Ok(Some(item)) => {
                            if !in_flight.insert(item.id) {
                                reading = false;
                                end = Some(Status::invalid_argument(format!(
                                    "id {} is already in flight on this stream; ids in flight must differ",
                                    item.id
                                )));
                                continue;
                            }
                            let (api, extensions, id) = (self.clone(), extensions.clone(), item.id);
                            let handle = running.spawn(api.answer(extensions, item));
                            tasks.insert(handle.id(), id);
                        }
                        Ok(None) => reading = false,
                        Err(status) => {
                            reading = false;
                            end = Some(frame_error(status));
                        }
                    }
                }
            }
        }
    }

    /// Send one answer, unless the caller is gone or the grace period ends while a slow reader
    /// holds it back. Returns whether the stream goes on.
    async fn send(
        &self,
        tx: &mpsc::Sender<std::result::Result<pb::SignStreamResponse, Status>>,
        answer: pb::SignStreamResponse,
        drain: &mut Drain,
    ) -> bool {
        tokio::select! {
            r = tx.send(Ok(answer)) => r.is_ok(),
            () = raised(&mut drain.cancel) => false,
        }
    }

    /// Answer one item through the unary handler of its kind.
    async fn answer(
        self,
        extensions: http::Extensions,
        item: pb::SignStreamRequest,
    ) -> pb::SignStreamResponse {
        let id = item.id;
        let Some(kind) = item.request else {
            return failed(
                id,
                String::new(),
                &Status::invalid_argument(format!("item {id} carries no request")),
            );
        };
        let result = match kind {
            Item::Jws(r) => self
                .sign_jws(item_request(extensions, r))
                .await
                .map(|r| split(r, Answer::Jws)),
            Item::Raw(r) => self
                .sign_raw(item_request(extensions, r))
                .await
                .map(|r| split(r, Answer::Raw)),
            Item::DpopProof(r) => self
                .sign_dpop_proof(item_request(extensions, r))
                .await
                .map(|r| split(r, Answer::Jws)),
            Item::IdToken(r) => self
                .sign_id_token(item_request(extensions, r))
                .await
                .map(|r| split(r, Answer::Jws)),
            Item::ClientAssertion(r) => self
                .sign_client_assertion(item_request(extensions, r))
                .await
                .map(|r| split(r, Answer::Jws)),
            Item::RequestObject(r) => self
                .sign_request_object(item_request(extensions, r))
                .await
                .map(|r| split(r, Answer::Jws)),
            Item::AccessToken(r) => self
                .sign_access_token(item_request(extensions, r))
                .await
                .map(|r| split(r, Answer::Jws)),
            Item::Digest(r) => self
                .sign_digest(item_request(extensions, r))
                .await
                .map(|r| split(r, Answer::Raw)),
        };
        match result {
            Ok((request_id, answer)) => pb::SignStreamResponse {
                id,
                result: Some(answer),
                request_id,
            },
            Err(status) => failed(id, metadata_request_id(status.metadata()), &status),
        }
    }
}

/// A unary request for one item, with the connection's identity (peer certificate or
/// credentials). The stream's metadata does not go with it: a `grpc-timeout` is the whole
/// stream's, not each item's, which the configured signing timeout bounds instead.
fn item_request<T>(mut extensions: http::Extensions, message: T) -> Request<T> {
    // Each item is a request of its own, with an id of its own (not the stream's).
    extensions.remove::<crate::service::RequestId>();
    Request::from_parts(tonic::metadata::MetadataMap::new(), extensions, message)
}

/// A unary answer as a stream answer: its body, and the request id from its metadata.
fn split<T>(r: tonic::Response<T>, wrap: fn(T) -> Answer) -> (String, Answer) {
    let (metadata, body, _) = r.into_parts();
    (metadata_request_id(&metadata), wrap(body))
}

/// The `x-request-id` in `metadata`, or empty.
fn metadata_request_id(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The error answer to item `id`: the code and message the unary RPC would have returned.
fn failed(id: u64, request_id: String, status: &Status) -> pb::SignStreamResponse {
    pb::SignStreamResponse {
        id,
        result: Some(Answer::Error(pb::SignStreamError {
            code: status.code() as i32,
            message: status.message().to_owned(),
        })),
        request_id,
    }
}

/// The status a stream ends with when its next frame could not be read: a frame that does not
/// decode is the caller's mistake (tonic calls it INTERNAL); a frame over the size limit keeps
/// tonic's OUT_OF_RANGE; a caller that reset the stream is told nothing it could still read.
fn frame_error(status: Status) -> Status {
    match status.code() {
        tonic::Code::Internal => Status::invalid_argument(format!(
            "a stream frame could not be decoded: {}",
            status.message()
        )),
        _ => status,
    }
}
