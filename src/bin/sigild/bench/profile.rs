//! `sigild bench --profile <path> --iterations N`: exactly N signatures through one path, one
//! caller, no table — for instruction-level profilers (`valgrind --tool=callgrind`), whose
//! counts are stable on a noisy machine where timings are not. Two runs with different N on a
//! kept `--state-dir` (so the keys exist already and set-up costs the same) differ by exactly
//! the cost of the extra signatures; divided by the difference in N, that is the cost of one
//! signature, function by function.
//!
//! Paths: `direct` (a PKCS#11 session of its own: hash + `C_Sign`), `service` (`SignRaw`
//! in-process: policy, audit, worker pool, verification), `jws` (`SignJws` in-process: the
//! same plus the generic JWS header checks and the compact form), `uds` (`SignRaw` over gRPC
//! on a Unix socket to the daemon's own runtime).

use std::sync::Arc;

use sigild::api::{Api, Listener, pb};
use sigild::jose::Alg;
use sigild::service::Origin;

use super::{
    BenchArgs, bench_key, benchmark_config, sample_input, start_daemon, uds_signing_client,
};
use crate::dev::DevPaths;

/// Run `args.iterations` signatures through `path`, printing how many succeeded.
///
/// # Errors
/// Set-up failures and an unknown path, as text.
pub async fn run(paths: &DevPaths, args: &BenchArgs, path: &str) -> Result<(), String> {
    let mut config = benchmark_config(paths).await?;
    if let Some(p11) = config.pkcs11.as_mut() {
        p11.workers = 1;
    }
    let running = start_daemon(config.clone(), paths, args.server_threads).await?;
    let service = Arc::clone(&running.service);
    let alg_name = args.algs.first().map_or("ES256", String::as_str);
    let alg = Alg::parse(alg_name).map_err(|e| e.to_string())?;
    let key = bench_key(&service, alg).await?;
    let input = sample_input();
    let n = args.iterations;
    let mut ok = 0u64;
    match path {
        "direct" => {
            let version = service.keyring().active(&key).map_err(|e| e.to_string())?;
            let p11 = running
                .pkcs11
                .as_ref()
                .ok_or("the profile needs the PKCS#11 backend")?;
            let p11 = Arc::clone(p11);
            ok = tokio::task::spawn_blocking(move || -> Result<u64, String> {
                let signer = p11
                    .direct_signer(&version.key_id, version.kind)
                    .map_err(|e| e.to_string())?;
                let mut ok = 0;
                for _ in 0..n {
                    if signer.sign(&alg.sign_op(&input)).is_ok() {
                        ok += 1;
                    }
                }
                Ok(ok)
            })
            .await
            .map_err(|e| e.to_string())??;
        }
        "service" => {
            let origin = Origin::in_process();
            for _ in 0..n {
                if service.sign_raw(&origin, &key, &input, None).await.is_ok() {
                    ok += 1;
                }
            }
        }
        "jws" => {
            let origin = Origin::in_process();
            let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, alg.name());
            let payload = br#"{"iss":"https://op.example.com","sub":"248289761001","aud":"s6BhdRkqt3","exp":1311281970,"iat":1311280970}"#;
            for _ in 0..n {
                if service
                    .sign_jws(&origin, &key, header.as_bytes(), payload)
                    .await
                    .is_ok()
                {
                    ok += 1;
                }
            }
        }
        "uds" => {
            let sock = paths.dir.join("profile.sock");
            let _ = std::fs::remove_file(&sock);
            {
                let _guard = running.runtime.enter();
                let listener = tokio::net::UnixListener::bind(&sock)
                    .map_err(|e| format!("{}: {e}", sock.display()))?;
                running.runtime.spawn(
                    tonic::transport::Server::builder()
                        .add_service(
                            Api::new(Arc::clone(&service), Listener::Unix).signing_service(),
                        )
                        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(
                            listener,
                        )),
                );
            }
            ok = tokio::task::spawn_blocking(move || uds_client(&sock, &key, &input, n))
                .await
                .map_err(|e| e.to_string())??;
        }
        other => return Err(format!("unknown profile path {other:?}")),
    }
    println!("profile {path} {alg_name}: {ok} of {n} signatures");
    tokio::task::spawn_blocking(move || running.shutdown())
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// `n` unary `SignRaw` calls on one HTTP/2 connection to `sock`, from a current-thread
/// runtime of their own (a caller in another process would look the same to the daemon).
fn uds_client(sock: &std::path::Path, key: &str, input: &[u8], n: u64) -> Result<u64, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let mut client = uds_signing_client(sock).await?;
        let mut ok = 0;
        for _ in 0..n {
            let req = pb::SignRawRequest {
                version: 0,
                key: key.to_owned(),
                data: input.to_vec(),
                alg: String::new(),
            };
            if client.sign_raw(req).await.is_ok() {
                ok += 1;
            }
        }
        Ok(ok)
    })
}
