//! Pipelined signing over one `SignStream`: for a caller that signs a lot (an OP minting
//! tokens for many logins, a batch job), many signatures in flight on one HTTP/2 stream instead
//! of one unary round trip each. [`SignPipeline::submit`] sends a request and returns at once
//! with a [`Pending`] answer, resolved by id whenever the daemon answers (in completion order);
//! the typed helpers ([`SignPipeline::sign_jws`], [`SignPipeline::sign_raw`]) await their own.
//!
//! Every request is still authorised, audited, signed and verified one by one by the daemon;
//! a refused one fails only its own answer, with the code its unary RPC would have returned.
//! Depends only on the generated [`crate::api::pb`] types and tokio; knows nothing of the
//! server side.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::{ClientError, Result};
use crate::api::pb;
use crate::api::pb::sign_stream_request::Request as Item;
/// One request of a stream: which signing RPC's request it is (`Jws`, `Raw`, `IdToken`, …).
pub use crate::api::pb::sign_stream_request::Request as StreamRequest;
use crate::api::pb::sign_stream_response::Result as Answer;
use crate::api::pb::signing_service_client::SigningServiceClient;

/// Requests of one pipeline in flight at most by default: the daemon's own bound per stream,
/// so a pipeline never has requests waiting unread on the daemon's side.
pub const DEFAULT_WINDOW: usize = 64;

/// One successful answer.
#[derive(Debug, Clone)]
pub enum Signed {
    /// A JWS (the `jws`, `dpop_proof`, `id_token`, `client_assertion`, `request_object` and
    /// `access_token` requests).
    Jws(pb::SignJwsResponse),
    /// A raw signature (the `raw` and `digest` requests).
    Raw(pb::SignRawResponse),
}

/// What a waiting request gets: its answer, and the window permit it held until then.
type Waiting = (
    oneshot::Sender<Result<(String, Signed)>>,
    OwnedSemaphorePermit,
);

/// Requests awaiting their answer, and how the stream ended once it has.
#[derive(Default)]
struct Book {
    /// Requests in flight by id.
    waiting: HashMap<u64, Waiting>,
    /// Set once the stream has ended: the code and message every later request fails with.
    ended: Option<(tonic::Code, String)>,
}

/// A signing stream to the daemon with many requests in flight. Cheap to clone (clones share
/// the stream); usable from many tasks at once. The stream is closed (half-closed, then ended
/// by the daemon once everything is answered) when the last clone is dropped.
#[derive(Clone)]
pub struct SignPipeline {
    /// Requests to the daemon.
    tx: mpsc::Sender<pb::SignStreamRequest>,
    /// Requests awaiting their answer; shared with the task reading answers.
    book: Arc<Mutex<Book>>,
    /// The next request id.
    next: Arc<AtomicU64>,
    /// One permit per request in flight: back-pressure on [`SignPipeline::submit`].
    window: Arc<Semaphore>,
}

impl std::fmt::Debug for SignPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignPipeline")
            .field("window_free", &self.window.available_permits())
            .finish_non_exhaustive()
    }
}

/// The answer to one submitted request, to await whenever convenient.
#[derive(Debug)]
pub struct Pending {
    /// Where the answer arrives.
    rx: oneshot::Receiver<Result<(String, Signed)>>,
}

impl Pending {
    /// The answer.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the code the unary RPC would have returned for this
    /// request, or with the status the stream ended with before answering it (UNAVAILABLE at a
    /// daemon's shutdown: the request was not signed, retry it elsewhere).
    pub async fn signed(self) -> Result<Signed> {
        self.with_request_id().await.map(|(_, s)| s)
    }

    /// The answer with the daemon's request id for it (the id of its audit record).
    ///
    /// # Errors
    /// As for [`Pending::signed`].
    pub async fn with_request_id(self) -> Result<(String, Signed)> {
        self.rx
            .await
            .map_err(|_| ClientError::InvalidResponse("the sign stream dropped a request".into()))?
    }
}

impl SignPipeline {
    /// Open a stream on `client` with room for `window` requests in flight (at least 1).
    ///
    /// # Errors
    /// [`ClientError::Status`] when the daemon refuses the stream (UNAUTHENTICATED, or
    /// UNIMPLEMENTED from a daemon without `SignStream`).
    pub async fn open<T>(mut client: SigningServiceClient<T>, window: usize) -> Result<Self>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<tonic::codegen::StdError>,
        T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    {
        let window = window.max(1);
        let (tx, rx) = mpsc::channel(window);
        let answers = client
            .sign_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let book = Arc::new(Mutex::new(Book::default()));
        tokio::spawn(read_answers(answers, Arc::clone(&book)));
        Ok(SignPipeline {
            tx,
            book,
            next: Arc::new(AtomicU64::new(1)),
            window: Arc::new(Semaphore::new(window)),
        })
    }

    /// Send `request` and return its [`Pending`] answer without waiting for it; waits only
    /// while the window is full.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the status the stream ended with, when it has.
    pub async fn submit(&self, request: Item) -> Result<Pending> {
        let permit = Arc::clone(&self.window)
            .acquire_owned()
            .await
            .map_err(|_| ClientError::InvalidResponse("the sign stream is closed".into()))?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (answer, rx) = oneshot::channel();
        {
            let mut book = lock(&self.book);
            if let Some((code, message)) = &book.ended {
                return Err(tonic::Status::new(*code, message.clone()).into());
            }
            book.waiting.insert(id, (answer, permit));
        }
        let sent = self
            .tx
            .send(pb::SignStreamRequest {
                id,
                request: Some(request),
            })
            .await;
        if sent.is_err() {
            lock(&self.book).waiting.remove(&id);
            return Err(ClientError::InvalidResponse(
                "the sign stream is closed".into(),
            ));
        }
        Ok(Pending { rx })
    }

    /// A generic JWS through the stream (as [`super::Client::sign_jws`]).
    ///
    /// # Errors
    /// As for [`Pending::signed`].
    pub async fn sign_jws(&self, req: pb::SignJwsRequest) -> Result<pb::SignJwsResponse> {
        jws(self.submit(Item::Jws(req)).await?.signed().await?)
    }

    /// A raw signature through the stream (as [`super::Client::sign_raw`]).
    ///
    /// # Errors
    /// As for [`Pending::signed`].
    pub async fn sign_raw(&self, req: pb::SignRawRequest) -> Result<pb::SignRawResponse> {
        match self.submit(Item::Raw(req)).await?.signed().await? {
            Signed::Raw(r) => Ok(r),
            Signed::Jws(_) => Err(ClientError::InvalidResponse(
                "a JWS answer to a raw signing request".into(),
            )),
        }
    }

    /// An ID token through the stream (as [`super::Client::sign_id_token`]).
    ///
    /// # Errors
    /// As for [`Pending::signed`].
    pub async fn sign_id_token(&self, req: pb::SignIdTokenRequest) -> Result<pb::SignJwsResponse> {
        jws(self.submit(Item::IdToken(req)).await?.signed().await?)
    }
}

/// The JWS in a JWS-kind answer.
fn jws(s: Signed) -> Result<pb::SignJwsResponse> {
    match s {
        Signed::Jws(r) => Ok(r),
        Signed::Raw(_) => Err(ClientError::InvalidResponse(
            "a raw answer to a JWS signing request".into(),
        )),
    }
}

/// The book, also after a panic elsewhere while it was held (its data stays consistent: each
/// change is a single insert or remove).
fn lock(book: &Mutex<Book>) -> std::sync::MutexGuard<'_, Book> {
    book.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Resolve answers by id until the stream ends, then fail whatever is still waiting with the
/// status it ended with.
async fn read_answers(
    mut answers: tonic::Streaming<pb::SignStreamResponse>,
    book: Arc<Mutex<Book>>,
) {
    let end = loop {
        match answers.message().await {
            Ok(Some(a)) => {
                let Some((answer, _permit)) = lock(&book).waiting.remove(&a.id) else {
                    tracing::warn!(id = a.id, "sign stream: an answer to no request in flight");
                    continue;
                };
                let result = match a.result {
                    Some(Answer::Jws(r)) => Ok((a.request_id, Signed::Jws(r))),
                    Some(Answer::Raw(r)) => Ok((a.request_id, Signed::Raw(r))),
                    Some(Answer::Error(e)) => {
                        let mut status =
                            tonic::Status::new(tonic::Code::from_i32(e.code), e.message);
                        if let Ok(v) = a.request_id.parse() {
                            status.metadata_mut().insert(crate::api::REQUEST_ID, v);
                        }
                        Err(status.into())
                    }
                    None => Err(ClientError::InvalidResponse(
                        "a sign stream answer without a result".into(),
                    )),
                };
                let _ = answer.send(result);
            }
            Ok(None) => {
                break (
                    tonic::Code::Unavailable,
                    "the sign stream ended before answering this request".to_owned(),
                );
            }
            Err(status) => break (status.code(), status.message().to_owned()),
        }
    };
    let waiting = {
        let mut book = lock(&book);
        book.ended = Some(end.clone());
        std::mem::take(&mut book.waiting)
    };
    for (_, (answer, _permit)) in waiting {
        let _ = answer.send(Err(tonic::Status::new(end.0, end.1.clone()).into()));
    }
}

impl super::Client {
    /// Open a [`SignPipeline`] on this client's channel, with [`DEFAULT_WINDOW`] requests in
    /// flight at most.
    ///
    /// # Errors
    /// As for [`SignPipeline::open`].
    pub async fn sign_pipeline(&self) -> Result<SignPipeline> {
        SignPipeline::open(self.signing.clone(), DEFAULT_WINDOW).await
    }
}
