//! The `sigild` binary: the command line, dev mode and the benchmark, on top of the library's
//! composition root ([`sigild::app`]). One thing is done here rather than in the library:
//! pointing SoftHSM at the dev token store, because that means setting an environment variable
//! before any thread exists.

mod bench;
mod cli;
mod dev;
mod pointer;

use std::process::ExitCode;

use clap::Parser as _;
use cli::{Cli, Command};
use sigild::{app, config::Config};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    // Dev and bench run on a SoftHSM token store of their own: set SOFTHSM2_CONF while the
    // process is still single-threaded (before the runtime starts).
    let dev_paths = match &cli.command {
        Command::Dev { state_dir, listen } => Some(dev::prepare(state_dir, *listen)),
        Command::Bench(args) => {
            let dir = args.state_dir.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("sigild-bench-{}", std::process::id()))
            });
            let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            Some(dev::prepare(&dir, listen))
        }
        _ => None,
    };
    let dev_paths = match dev_paths.transpose() {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    if let Some(p) = &dev_paths {
        set_softhsm_conf(&p.softhsm_conf);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let result: Result<(), Box<dyn std::error::Error>> = runtime.block_on(async move {
        match cli.command {
            Command::Serve { config } => {
                let c = Config::load(&config)?;
                let running = app::start(&c, &config).await?;
                running.run_until(shutdown_signal()).await?;
            }
            Command::Dev { .. } => {
                let paths = dev_paths.ok_or("dev paths missing")?;
                let p2 = paths.clone();
                let created = tokio::task::spawn_blocking(move || dev::ensure_token(&p2)).await??;
                if created {
                    tracing::info!(dir = %paths.dir.display(), "created the SoftHSM dev token");
                }
                let c = Config::load(&paths.config)?;
                let running = app::start(&c, &paths.config).await?;
                let keys = dev::ensure_default_keys(&running.service)
                    .await
                    .map_err(|e| e.chain().to_string())?;
                if !keys.is_empty() {
                    tracing::info!(keys = ?keys, "created default dev keys");
                }
                let endpoint = format!("https://{}", running.addr());
                let exe = std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "sigild".into());
                match pointer::write(&pointer::DevPointer {
                    dir: paths.dir.clone(),
                    endpoint: endpoint.clone(),
                    pid: std::process::id(),
                }) {
                    Ok(at) => tracing::info!(
                        pointer = %at.display(),
                        "sigild dev ready on {endpoint} (mTLS, dev PKI in {dir}) and unix:{socket}: as this user, from any directory, try `{exe} key list` or `{exe} jwks`",
                        dir = paths.dir.display(),
                        socket = paths.socket.display(),
                    ),
                    Err(e) => tracing::info!(
                        "sigild dev ready on {endpoint} (mTLS, dev PKI in {dir}) and unix:{socket}: no dev pointer ({e}); try `{exe} key list --endpoint unix:{socket}`",
                        dir = paths.dir.display(),
                        socket = paths.socket.display(),
                    ),
                }
                let result = running.run_until(shutdown_signal()).await;
                pointer::remove(&paths.dir);
                result?;
            }
            Command::CheckConfig { config, offline } => cli::check_config(&config, offline)?,
            Command::Bench(args) => {
                let paths = dev_paths.ok_or("bench paths missing")?;
                let result = if args.overload {
                    bench::run_overload(&paths, &args).await
                } else {
                    bench::run(&paths, &args).await.map(drop)
                };
                if args.state_dir.is_none() {
                    let _ = std::fs::remove_dir_all(&paths.dir);
                }
                result?;
            }
            Command::Key { conn, command } => cli::key_command(&conn, command).await?,
            Command::Jwks { conn } => cli::jwks_command(&conn).await?,
            Command::Sign { conn, command } => cli::sign_command(&conn, command).await?,
            Command::Tls { conn, command } => cli::tls_command(&conn, command).await?,
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&*e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("sigild: {e}");
    ExitCode::FAILURE
}

#[allow(unsafe_code)]
fn set_softhsm_conf(path: &std::path::Path) {
    // SAFETY: called from `main` before the tokio runtime or any other thread is started, so
    // no other thread can be reading the environment concurrently.
    unsafe { std::env::set_var("SOFTHSM2_CONF", path) };
}

/// Logs go to stderr (stdout is for results), level from `SIGILD_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIGILD_LOG")
        // cryptoki logs an error for every session it cannot close after the module was
        // re-initialised (sigild does that to recover a token); those sessions are gone anyway.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,cryptoki::session::session_management=off")
        });
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
