//! A DPoP-bound token request (RFC 9449) with `private_key_jwt` client authentication
//! (RFC 7523), both keys on the HSM behind sigild, answering a `use_dpop_nonce` challenge.
//!
//! ```text
//! sigild dev &
//! sigild key create client-a-dpop --alg ES256
//! sigild key create client-a-auth --alg PS256
//! cargo run --example dpop_token_request -- https://as.example.com as.example.com:443 /token client-a CODE VERIFIER https://client.example/cb as-ca.pem
//! ```
//!
//! HTTP is hand-written HTTP/1.1 over tokio-rustls to keep the example free of an HTTP client
//! dependency; use your own client and keep the `dpop_with_nonce_retry` part.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use sigild::client::{Client, Connection, DpopOutcome, DpopRequest, use_dpop_nonce};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The status, `DPoP-Nonce` header and body of an HTTP response.
struct Response {
    status: u16,
    dpop_nonce: Option<String>,
    www_authenticate: Option<String>,
    body: String,
}

async fn post_form(
    tls: &Arc<rustls::ClientConfig>,
    addr: &str,
    path: &str,
    dpop: &str,
    form: &str,
) -> Result<Response, Error> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(ServerName::try_from(host.clone())?, tcp)
        .await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nDPoP: {dpop}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    Ok(Response {
        status,
        dpop_nonce: header("DPoP-Nonce"),
        www_authenticate: header("WWW-Authenticate"),
        body: body.to_owned(),
    })
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [
        issuer,
        addr,
        path,
        client_id,
        code,
        verifier,
        redirect_uri,
        as_ca,
    ] = args.as_slice()
    else {
        return Err(
            "usage: dpop_token_request ISSUER HOST:PORT PATH CLIENT_ID CODE VERIFIER REDIRECT_URI AS-CA.pem"
                .into(),
        );
    };
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let sigild = Client::connect(&Connection::mtls(
        var("SIGILD_ENDPOINT", "https://127.0.0.1:7711"),
        var("SIGILD_CA", ".sigild/ca.pem"),
        var("SIGILD_CERT", ".sigild/client.pem"),
        var("SIGILD_KEY", ".sigild/client.key"),
    ))
    .await?;
    println!("dpop_jkt: {}", sigild.dpop_jkt("client-a-dpop").await?);

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(as_ca)? {
        roots.add(c?)?;
    }
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let url = format!("https://{addr}{path}");
    let req = DpopRequest {
        key: "client-a-dpop",
        method: "POST",
        url: &url,
        access_token: None,
        nonce: None,
    };
    let (response, nonce) = sigild
        .dpop_with_nonce_retry(&req, |dpop| {
            let (sigild, tls, addr, path) = (sigild.clone(), Arc::clone(&tls), addr, path);
            async move {
                // A client assertion is single-use: a fresh one for every attempt.
                let assertion = sigild
                    .client_assertion("client-a-auth", client_id, issuer)
                    .await?;
                let form = form_encode(&[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("code_verifier", verifier),
                    ("redirect_uri", redirect_uri),
                    ("client_id", client_id),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &assertion),
                ]);
                let r = post_form(&tls, addr, path, &dpop, &form).await?;
                Ok::<_, Error>(
                    match use_dpop_nonce(
                        r.status,
                        r.www_authenticate.as_deref(),
                        Some(&r.body),
                        r.dpop_nonce.as_deref(),
                    ) {
                        Some(n) => DpopOutcome::UseNonce(n),
                        None => DpopOutcome::Done(r),
                    },
                )
            }
        })
        .await?;
    println!("HTTP {} (next DPoP nonce: {nonce:?})", response.status);
    println!("{}", response.body);
    Ok(())
}
