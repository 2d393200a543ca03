//! `SignStream` helpers: a pipelined stream as a given caller (the client library's
//! [`SignPipeline`]), a stream driven message by message with the generated client, and a
//! stream of raw bytes (a pass-through codec, so frames that are not valid protobuf reach the
//! daemon).

use bytes::{Buf as _, BufMut as _};
use sigild::api::pb;
use sigild::client::SignPipeline;
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::{ClientFiles, Daemon, TestResult};

/// A pipelined `SignStream` to `d` as the caller `files` names.
pub async fn pipeline_as(
    d: &Daemon,
    files: &ClientFiles,
    window: usize,
) -> TestResult<SignPipeline> {
    Ok(SignPipeline::open(d.signer_as(files).await?, window).await?)
}

/// A `SignStream` driven by hand: send with `tx`, read with `rx` (answers, then how it ended).
pub struct ManualStream {
    pub tx: mpsc::Sender<pb::SignStreamRequest>,
    pub rx: tonic::Streaming<pb::SignStreamResponse>,
}

impl ManualStream {
    /// Open one as the admin.
    pub async fn open(d: &Daemon) -> TestResult<ManualStream> {
        let (tx, rx) = mpsc::channel(256);
        let rx = d
            .signer()
            .await?
            .sign_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(ManualStream { tx, rx })
    }

    /// The next answer, or the status the stream ended with (`Ok(None)`: ended OK).
    pub async fn next(&mut self) -> Result<Option<pb::SignStreamResponse>, tonic::Status> {
        tokio::time::timeout(std::time::Duration::from_secs(20), self.rx.message())
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("no answer from the stream in 20 s"))?
    }
}

/// Send `frames` as raw gRPC messages on a `SignStream` as the admin, half-close, and collect
/// what comes back: the answers (raw bytes) and the status the stream ended with.
pub async fn raw_stream(
    d: &Daemon,
    frames: Vec<Vec<u8>>,
) -> TestResult<(Vec<Vec<u8>>, tonic::Status)> {
    let mut grpc = tonic::client::Grpc::new(d.channel().await?);
    grpc.ready().await?;
    let path = http::uri::PathAndQuery::from_static("/sigil.v1.SigningService/SignStream");
    let outbound = tokio_stream::iter(frames);
    let mut answers = Vec::new();
    let mut inbound = match grpc
        .streaming(tonic::Request::new(outbound), path, RawCodec)
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return Ok((answers, status)),
    };
    loop {
        match inbound.message().await {
            Ok(Some(a)) => answers.push(a),
            Ok(None) => return Ok((answers, tonic::Status::ok(""))),
            Err(status) => return Ok((answers, status)),
        }
    }
}

/// Sends the bytes given as the message, keeps the answer's bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}
